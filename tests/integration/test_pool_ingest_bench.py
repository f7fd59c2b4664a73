"""The pool ingest benchmark in its quick size: the same uploads into SQLite and into PostgreSQL clusters run
fast (fsync off) and durable (PostgreSQL's defaults), by one and by two ingest worker processes; every
upload lands in the pool once in every case."""

from fixtures.benchmarks import run_benchmark


def test_the_pool_ingest_benchmark_measures_every_case_and_loses_nothing(tmp_path):
    report, process = run_benchmark("pool_ingest.py", tmp_path / "report.json", "--quick")
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    cases = report["cases"]
    assert set(cases) == {"sqlite", "postgres-fast-1", "postgres-fast-2", "postgres-durable-1", "postgres-durable-2"}
    assert report["uploads"] == 120
    for name, case in cases.items():
        assert case["lost"] == 0 and case["twice"] == 0, name
        assert case["frames_per_s"] > 0
    assert cases["postgres-durable-2"]["workers"] == 2 and "vs_one_worker" in cases["postgres-durable-2"]
    # the durable cluster really runs PostgreSQL's flushing defaults; the fast one does not flush
    assert report["postgres_settings"]["postgres-durable"] == {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
    }
    assert report["postgres_settings"]["postgres-fast"]["fsync"] == "off"
