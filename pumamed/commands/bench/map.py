"""``python -m pumamed bench map``: how long the national choropleth takes to build.

Each figure is built *and serialised to JSON* (what Streamlit sends to the browser), for the
2,469 municipalities coloured by CONAPO's IM_2020 with natural breaks:

- ``cold``: empty memory caches and an empty on-disk cache (a fresh install: polygons rebuilt
  from the RData, coverage-simplified, GeoJSON prepared);
- ``cold, disk cache``: empty memory caches, on-disk GeoParquet present (a new server process);
- ``warm``: everything cached (every page rerun) -- the target is < 1.5 s;
- ``naive`` baseline: ``plotly.express.choropleth`` over the full-resolution GeoDataFrame's
  ``__geo_interface__`` with ``featureidkey="properties.CVEGEO"``, i.e. what one writes first.

Ratios are printed against ``warm``. ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse

TARGET_WARM_S = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="data directory (default: $PUMAMED_DATA_DIR)")
    parser.add_argument("--repeats", type=int, default=5, help="warm repetitions (the median is reported)")
    parser.add_argument("--scheme", default="natural_breaks",
                        choices=["quantiles", "natural_breaks", "equal_interval", "unclassed"])
    parser.add_argument("--renderer", default="geo", choices=["geo", "maplibre"])
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline (slow)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    import json
    import os
    import statistics
    import tempfile
    import time

    from pumamed.epi import geometry, mapping
    from pumamed.epi.socio import read_imm_2020

    data = read_imm_2020(args.data_dir)[["CVEGEO", "IM_2020"]]

    def build() -> tuple[float, int, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        result = mapping.municipal_choropleth(data, "IM_2020", label="Marginalization index 2020",
                                              scheme=args.scheme, renderer=args.renderer, data_dir=args.data_dir)
        payload = result.figure.to_json()
        return time.perf_counter() - start, len(payload), time.process_time() - start_cpu

    def clear_memory() -> None:
        mapping.clear_caches()
        for cached in ("_municipalities_cached", "_states_cached"):
            function = getattr(geometry, cached, None)
            if function is not None and hasattr(function, "cache_clear"):
                function.cache_clear()

    results: dict[str, float | int | str] = {"scheme": args.scheme, "renderer": args.renderer}
    previous_cache = os.environ.get("PUMAMED_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="pumamed-bench-map-") as empty_cache:
        os.environ["PUMAMED_CACHE_DIR"] = empty_cache
        try:
            clear_memory()
            results["cold_s"], _, results["cold_cpu_s"] = build()
            clear_memory()
            results["cold_disk_cache_s"], _, results["cold_disk_cache_cpu_s"] = build()
        finally:
            if previous_cache is None:
                os.environ.pop("PUMAMED_CACHE_DIR", None)
            else:
                os.environ["PUMAMED_CACHE_DIR"] = previous_cache
            clear_memory()
    build()  # fill the caches at their normal location
    warm = [build() for _ in range(max(1, args.repeats))]
    results["warm_s"] = statistics.median(t for t, _, _ in warm)
    # CPU time too: on a shared machine wall time also measures the neighbours.
    results["warm_cpu_s"] = statistics.median(c for _, _, c in warm)
    results["payload_mb"] = round(warm[0][1] / 1e6, 3)

    if not args.no_naive:
        import plotly.express as px

        start, start_cpu = time.perf_counter(), time.process_time()
        full = geometry.load_municipalities(args.data_dir)
        naive = px.choropleth(data, geojson=full[["CVEGEO", "geometry"]].__geo_interface__, locations="CVEGEO",
                              featureidkey="properties.CVEGEO", color="IM_2020", color_continuous_scale="viridis")
        naive.update_geos(fitbounds="locations", visible=False)
        payload = naive.to_json()
        results["naive_s"] = time.perf_counter() - start
        results["naive_cpu_s"] = time.process_time() - start_cpu
        results["naive_payload_mb"] = round(len(payload) / 1e6, 3)

    warm_s = float(results["warm_s"])
    results["cold_over_warm"] = float(results["cold_s"]) / warm_s
    results["cold_disk_cache_over_warm"] = float(results["cold_disk_cache_s"]) / warm_s
    if "naive_s" in results:
        results["naive_over_warm"] = float(results["naive_s"]) / warm_s
    results["target_warm_s"] = TARGET_WARM_S
    results["meets_target"] = warm_s < TARGET_WARM_S

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"national choropleth (2,469 municipalities, {args.scheme}, {args.renderer}), built + serialised to JSON")
    print(f"  cold (no caches)        {results['cold_s']:8.3f} s   {results['cold_over_warm']:6.1f}x warm   "
          f"(CPU {results['cold_cpu_s']:.3f} s)")
    print(f"  cold (disk cache)       {results['cold_disk_cache_s']:8.3f} s   "
          f"{results['cold_disk_cache_over_warm']:6.1f}x warm")
    print(f"  warm (median of {len(warm)})      {warm_s:8.3f} s   (CPU {results['warm_cpu_s']:.3f} s)   "
          f"payload {results['payload_mb']} MB   "
          f"target < {TARGET_WARM_S} s: {'met' if results['meets_target'] else 'NOT met'}")
    if "naive_s" in results:
        print(f"  naive px.choropleth     {results['naive_s']:8.3f} s   {results['naive_over_warm']:6.1f}x warm   "
              f"payload {results['naive_payload_mb']} MB")
    return 0
