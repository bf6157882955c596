// SPDX-License-Identifier: MIT
// node measure.mjs LIBDIR SCRIPT: run SCRIPT on the MicroPython webassembly port (32-bit)
// with LIBDIR's files under /lib (the port's filesystem is in memory). Used by bench/heap.py.
import fs from "fs";
import path from "path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const [libdir, script] = process.argv.slice(2);
const mp = await loadMicroPython({
  heapsize: 4 * 1024 * 1024,
  stdout: (line) => console.log(line),
  stderr: (line) => console.error(line),
});
function copy(src, dest) {
  mp.FS.mkdir(dest);
  for (const name of fs.readdirSync(src)) {
    const p = path.join(src, name);
    if (fs.statSync(p).isDirectory()) copy(p, dest + "/" + name);
    else mp.FS.writeFile(dest + "/" + name, fs.readFileSync(p));
  }
}
copy(libdir, "/lib");
mp.runPython('import sys\nsys.path.append("/lib")\nprint("VERSION", sys.version)');
try {
  mp.runPython(fs.readFileSync(script, "utf8"));
} catch (err) {
  console.error(String(err));
  process.exit(1);
}
