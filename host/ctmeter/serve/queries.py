# SPDX-License-Identifier: MIT
"""Usage, cost and period summaries computed from stored readings.

    usage_today(store, cfg, now)                     -> {"devices": [...], "kwh", "cost"}
    summary(store, cfg, period, start, end, device)  -> [{"period", "kwh", "cost"}]
    monthly_by_device(store, cfg, year)              -> {"year", "devices": {id: [12 x kWh]}}

Usage comes from the device's energy counter: the sum of increases between consecutive
readings. A counter that goes down was reset (new device, flash wiped), so the new value is
the usage since the reset: usage is never negative. Readings without a counter (the seeds'
minimal body) count power x time to the next reading, capped at the missed-interval limit.
"""

from datetime import date, datetime, timedelta


def _delta_mwh(cfg, energy, prev, power, gap_ms, interval):
    if energy is not None:
        if prev is None:
            return 0.0
        return float(energy - prev) if energy >= prev else float(energy)
    if gap_ms is None or power is None or power <= 0:
        return 0.0
    cap_s = (interval or cfg.default_interval_s) * cfg.offline_after_intervals
    return power * min(gap_ms / 1000.0, cap_s) / 3.6  # W*s -> mWh


def _rows(store, cfg, start_ms, end_ms, device_id=None):
    for dev, ts_ms, energy, prev, power, gap, interval in store.energy_rows(
            start_ms, end_ms, device_id):
        yield dev, ts_ms, _delta_mwh(cfg, energy, prev, power, gap, interval)


def _local_midnight(cfg, day):
    return datetime(day.year, day.month, day.day, tzinfo=cfg.tz)


def _ms(dt):
    return int(dt.timestamp() * 1000)


def _money(cfg, kwh):
    return round(kwh * cfg.tariff_per_kwh, 4)


def usage_today(store, cfg, now, device_id=None):
    today = datetime.fromtimestamp(now, cfg.tz).date()
    start = _ms(_local_midnight(cfg, today))
    per = {}
    for dev, _ts, d in _rows(store, cfg, start, int(now * 1000) + 1, device_id):
        per[dev] = per.get(dev, 0.0) + d
    devices = [
        {"deviceId": dev, "kwh": round(mwh / 1e6, 6), "cost": _money(cfg, mwh / 1e6)}
        for dev, mwh in sorted(per.items())
    ]
    total = sum(per.values()) / 1e6
    return {"date": today.isoformat(), "devices": devices, "kwh": round(total, 6),
            "cost": _money(cfg, total), "tariffPerKwh": cfg.tariff_per_kwh,
            "currency": cfg.currency}


def period_key(period, day):
    if period == "daily":
        return day.isoformat()
    if period == "weekly":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "monthly":
        return f"{day.year}-{day.month:02d}"
    raise ValueError("period must be daily, weekly or monthly")


def summary(store, cfg, period, start, end, device_id=None):
    """kWh and cost per local day/ISO week/month for readings in [start, end) (Unix s)."""
    period_key(period, date(2000, 1, 1))  # validates the period name
    buckets = {}
    for _dev, ts_ms, d in _rows(store, cfg, int(start * 1000), int(end * 1000), device_id):
        day = datetime.fromtimestamp(ts_ms / 1000, cfg.tz).date()
        key = period_key(period, day)
        buckets[key] = buckets.get(key, 0.0) + d
    return [
        {"period": k, "kwh": round(v / 1e6, 6), "cost": _money(cfg, v / 1e6)}
        for k, v in sorted(buckets.items())
    ]


def last_days(cfg, now, days):
    """(start, end) Unix seconds covering the last `days` local days including today."""
    today = datetime.fromtimestamp(now, cfg.tz).date()
    start = _local_midnight(cfg, today - timedelta(days=days - 1))
    return start.timestamp(), now + 1


def monthly_by_device(store, cfg, year):
    start = _ms(_local_midnight(cfg, date(year, 1, 1)))
    end = _ms(_local_midnight(cfg, date(year + 1, 1, 1)))
    out = {}
    for dev, ts_ms, d in _rows(store, cfg, start, end):
        month = datetime.fromtimestamp(ts_ms / 1000, cfg.tz).month
        out.setdefault(dev, [0.0] * 12)[month - 1] += d
    return {"year": year, "devices": {k: [round(v / 1e6, 6) for v in months]
                                      for k, months in sorted(out.items())}}
