"""Percentiles and the closed-loop window bookkeeping shared by the drivers'
reports (the Celery driver uses it directly; the orchestrator reads the
relay driver's JSON, which follows the same fields)."""


def percentile(sorted_values, q):
    """The q-quantile (0..1) of an ascending list, nearest-rank."""
    if not sorted_values:
        return None
    rank = max(1, int(round(q * len(sorted_values) + 0.5 - 1e-9)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(side, concurrency, latencies_s, window_s, total_submitted, total_completed, lost):
    """The one JSON object a driver prints for one concurrency point."""
    lat = sorted(latencies_s)
    ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
    return {
        "side": side,
        "concurrency": concurrency,
        "window_s": round(window_s, 3),
        "measured_jobs": len(lat),
        "jobs_per_s": round(len(lat) / window_s, 2) if window_s > 0 else None,
        "p50_ms": ms(percentile(lat, 0.50)),
        "p99_ms": ms(percentile(lat, 0.99)),
        "max_ms": ms(lat[-1] if lat else None),
        "mean_ms": ms(sum(lat) / len(lat) if lat else None),
        "total_submitted": total_submitted,
        "total_completed": total_completed,
        "lost": lost,
    }
