"""`sceneloc bench`: compare sceneloc with its peers on benchmark suites (accuracy, mapping time and memory, query
time, map size).

Modules: scenes (PreparedScene, SceneSpec, the scene cache, procedural scene specs), real_scenes (real data sets),
variant_scenes (degraded query copies), scan_scenes (the copyroom scan), suites (SUITES), methods (METHODS, the
mapping child process), runner (BenchOptions, run_bench), report (results.json, report.md). This file imports
nothing: the mapping child process imports the package, and its peak memory must only hold what the method itself
needs.
"""
