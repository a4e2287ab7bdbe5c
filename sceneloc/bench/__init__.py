"""`sceneloc bench`: compare sceneloc with its peers on benchmark suites (accuracy, mapping time and memory, query
time, map size).

Modules: suites (SUITES, the scene cache), methods (METHODS, the mapping child process), runner (BenchOptions,
run_bench), report (results.json, report.md). This file imports nothing: the mapping child process imports the
package, and its peak memory must only hold what the method itself needs.
"""
