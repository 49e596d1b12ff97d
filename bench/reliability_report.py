"""Reliability report (issues 6 and 16): run the fault-injection and security tests and print what
they survived.

    python bench/reliability_report.py            # ~2.5 min on 2 cores
    python bench/reliability_report.py --json out.json

Runs pytest in this process on the reliability test files with a small plugin that collects each
test's outcome and the figures the tests record (`record_property`), and counts the refusals of
hostile model files and bundles by wrapping the loaders the untrusted-file tests call. Prints:
kinds of bad input tried and their outcomes, kills survived, concurrent clients held, hostile
bundle kinds refused, disk-full cases, server checks, the security holes of issue 16, each with its
"nothing lost" check.
Exits non-zero when any check failed.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
FILES = [
    "tests/test_scan.py::test_bad_input_corpus_each_file_has_expected_outcome",
    "tests/test_reliability_kill.py",
    "tests/test_untrusted_files.py",
    "tests/test_disk_full.py",
    "tests/test_reliability_app.py",
    "tests/test_security.py",
    "tests/test_app_unit.py::test_a_name_that_is_both_a_file_and_a_folder_is_refused_in_words",
    "tests/test_app_unit.py::test_zip_claiming_millions_of_entries_is_refused_from_its_end_record",
    "tests/test_pipeline.py::test_retrain_refuses_settings_start_would_refuse_before_building_anything",
]
WRAPPED = ("import_run", "load_vqvae", "load_prior", "load_codes", "read_manifest")
PWNED = Path("/tmp/distill-pwned")  # what the pickle payload in test_untrusted_files would create


class Collector:
    """A pytest plugin: outcomes, durations, recorded figures, and refusals of untrusted files."""

    def __init__(self):
        self.tests: dict[str, dict] = {}
        self.refusals: dict[str, list[tuple[str, str]]] = {}  # test name -> [(function, message)]

    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("::")[-1]
        t = self.tests.setdefault(name, {"file": report.nodeid.split("::")[0], "outcome": "passed", "seconds": 0.0,
                                         "props": {}})
        t["seconds"] += report.duration
        if report.failed:
            t["outcome"] = "failed"
            t["error"] = str(report.longrepr)[-1500:]
        for key, value in report.user_properties:
            try:
                t["props"][key] = json.loads(value)
            except (TypeError, ValueError):
                t["props"][key] = value

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        module = item.module
        name = item.name
        patched = []
        if module.__name__ == "test_untrusted_files":
            from distill.storage import UnsafeFileError

            for fn_name in WRAPPED:
                original = getattr(module, fn_name, None)
                if original is None:
                    continue

                def wrapper(*args, __fn=original, __name=fn_name, **kwargs):
                    try:
                        return __fn(*args, **kwargs)
                    except UnsafeFileError as exc:
                        self.refusals.setdefault(name, []).append((__name, str(exc)))
                        raise

                setattr(module, fn_name, functools.wraps(original)(wrapper))
                patched.append((fn_name, original))
        try:
            yield
        finally:
            for fn_name, original in patched:
                setattr(module, fn_name, original)


def mark(ok: bool) -> str:
    return "ok" if ok else "FAILED"


def security_report(out, test, passed) -> None:
    """Issue 16: each hole a review found, and what its test tried."""
    out("Security (issue 16)")
    pv = test("test_preview_plays_only_files_the_run_used")["props"].get("preview", {})
    v6 = test("test_launched_on_ipv6_loopback_other_sites_get_nothing")["props"].get("ipv6", {})
    xs = test("test_other_sites_cannot_upload_or_call_the_api")["props"].get("cross_site", {})
    il = test("test_a_non_audio_upload_is_never_served_inline")["props"].get("inline", {})
    qu = test("test_uploads_waiting_in_the_workspace_have_a_quota")["props"].get("quota", {})
    bo = test("test_tiny_files_that_decode_to_gigabytes_are_skipped_from_their_header")["props"].get("bombs", {})
    rows = [
        ("markup in a bundle's manifest", "refused on import; a run already holding it is drawn escaped; 8 wrong "
         "types never break the runs list or the card",
         ("test_bundle_with_markup_in_its_manifest_is_refused_and_never_drawn",
          "test_wrong_types_in_a_manifest_never_break_the_runs_list")),
        ("audio preview", f"{pv.get('names_tried', '?')} spellings of a file under a run's source that the run did not "
         f"use -> {pv.get('served', '?')} played", ("test_preview_plays_only_files_the_run_used",
                                                     "test_preview_still_plays_a_used_file")),
        ("IPv6 loopback ([::1])", "another site's Origin: 403 with no Access-Control-Allow-Origin "
         f"({'none' if v6.get('acao') is None else v6.get('acao')}); foreign Host: 400",
         ("test_launched_on_ipv6_loopback_other_sites_get_nothing", "test_host_guard_treats_every_loopback_name_alike")),
        ("requests from other sites", f"cross-site upload and API call: {xs.get('refused', '?')} refused (403), "
         f"{xs.get('stored', '?')} files stored; foreign/null Origin and Sec-Fetch-Site refused on every host",
         ("test_other_sites_cannot_upload_or_call_the_api", "test_guard_refuses_other_sites_on_any_host")),
        ("uploads served back", f"{il.get('kinds', '?')} non-audio kinds (html, svg, js, txt, a dataset copy) -> "
         f"{il.get('inline', '?')} inline; audio still plays", ("test_a_non_audio_upload_is_never_served_inline",)),
        ("upload quota", f"{qu.get('quota_mb', '?')} MB quota: refused after {qu.get('accepted_before_refusal', '?')} "
         "uploads of 1 MB, in words (HTTP 413)", ("test_uploads_waiting_in_the_workspace_have_a_quota",)),
        ("audio decompression bombs", f"{bo.get('files', '?')} FLACs of ~1 MB, {bo.get('decoded_gb_each', '?')} GB "
         f"decoded each: all skipped from the header, scan peak RSS {bo.get('peak_mb', '?')} MB",
         ("test_tiny_files_that_decode_to_gigabytes_are_skipped_from_their_header",
          "test_the_longest_stereo_file_still_decodes_in_bounded_memory")),
        ("retrain settings", "3 impossible prior settings refused in words before any model is built",
         ("test_retrain_refuses_settings_start_would_refuse_before_building_anything",)),
        ("a file and a folder of one name", "'x' with 'x/y.wav' (upload, zip): refused in words, nothing left",
         ("test_a_name_that_is_both_a_file_and_a_folder_is_refused_in_words",)),
        ("oversized and nested files", "1 GB metrics.jsonl, 100,000-deep JSON in a manifest, sidecar, log line "
         "or code names: refused on import or shown safely", (
             "test_oversized_and_deeply_nested_files_in_a_bundle_are_refused",
             "test_oversized_and_deeply_nested_files_in_a_run_are_shown_safely")),
        ("maths-like file names", "4 names matplotlib would read as maths ($\\x$ ...) drawn as text",
         ("test_a_file_name_matplotlib_reads_as_maths_is_drawn_as_text",)),
        ("zip directory claims", "a 300-byte zip claiming 5,000,000 entries: refused from its end record, zipfile "
         "never called", ("test_zip_claiming_millions_of_entries_is_refused_from_its_end_record",)),
    ]
    for label, what, names in rows:
        out(f"  {label:<33} {what}  [{mark(passed(*names))}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write the collected figures here")
    args = ap.parse_args()
    os.chdir(REPO)
    sys.path[:0] = [str(TESTS), str(REPO)]
    collector = Collector()
    pwned_before = PWNED.exists()
    t0 = time.time()
    code = pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "-o", "console_output_style=classic", *FILES],
                       plugins=[collector])
    wall = time.time() - t0
    tests = collector.tests

    def test(name: str) -> dict:
        cases = [t for n, t in tests.items() if n.startswith(name + "[")]  # a parametrized test: all its cases
        if name not in tests and cases:
            return {"outcome": "passed" if all(t["outcome"] == "passed" for t in cases) else "failed", "props": {},
                    "seconds": sum(t["seconds"] for t in cases)}
        return tests.get(name, {"outcome": "not run", "props": {}, "seconds": 0.0})

    def passed(*names: str) -> bool:
        return all(test(n)["outcome"] == "passed" for n in names)

    import test_reliability_kill

    from badfiles import make_corpus

    lines: list[str] = []
    out = lines.append
    out("")
    out("=" * 78)
    out(f"Distill reliability report  ({len(tests)} tests, {wall:.0f} s wall, {os.cpu_count()} CPUs)")
    out("=" * 78)

    # --- bad input ---
    bf = test("test_bad_files_through_the_api_and_training_on_the_mixed_folder")["props"].get("bad_files", {})
    up = test("test_hostile_uploads_and_archives")["props"].get("uploads", {})
    ft = test("test_five_thousand_tiny_files")["props"].get("five_thousand", {})
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        lib_cases = make_corpus(Path(tmp) / "corpus")
    out("Bad input")
    out(f"  audio corpus, library scan      {len({c.kind for c in lib_cases})} kinds / {len(lib_cases)} files, each with "
        f"its expected outcome and reason  [{mark(passed('test_bad_input_corpus_each_file_has_expected_outcome'))}]")
    if bf:
        out(f"  same corpus through the app API {bf['kinds']} kinds / {bf['files']} files (1-hour file included): "
            f"{bf['used']} used, {bf['skipped']} skipped with a reason, {bf['crashes']} crashes; "
            f"{bf['hostile_strings']} hostile paths, ids and settings refused")
        out(f"  training on the mixed folder    done, used exactly the {bf['trained_on']} good files  "
            f"[{mark(passed('test_bad_files_through_the_api_and_training_on_the_mixed_folder'))}]")
    if up:
        out(f"  hostile uploads and archives    {up['kinds']} kinds: {up['refused']} refused with a message, "
            f"{up['ingested']} taken in safely, {up['escaped']} files written outside  "
            f"[{mark(passed('test_hostile_uploads_and_archives'))}]")
    if ft:
        out(f"  5,000 tiny files                {ft['files']} judged one by one ({ft['used']} used, {ft['skipped']} "
            f"skipped: too short) in {ft['scan_s']} s; a 5,001-file folder refused in words  "
            f"[{mark(passed('test_five_thousand_tiny_files'))}]")
    corpus_kinds = bf.get("kinds") or len({c.kind for c in lib_cases})  # the app's corpus adds the 1-hour file
    kinds_total = corpus_kinds + up.get("kinds", 0) + (2 if ft else 0) + bf.get("hostile_strings", 0)
    out(f"  => {kinds_total} kinds of bad input tried, zero crashes, every file's outcome reported")

    # --- kills ---
    kill = test("test_kill_9_during_saves_never_leaves_a_half_written_run")
    ak = test("test_kill_9_mid_training_then_restart_recovers")["props"].get("app_kill", {})
    out("Crashes")
    out(f"  kill -9 during saves            {test_reliability_kill.KILLS if kill['outcome'] == 'passed' else 0}"
        f"/{test_reliability_kill.KILLS} survived: every model/codes/metrics file old-or-new complete, run listed, "
        f"temp files swept  [{mark(kill['outcome'] == 'passed')}]")
    if ak:
        out(f"  kill -9 of the app mid-training {ak['kills']} kill + restart: run marked interrupted on disk, "
            f"{ak['temp_files_swept']} stale temp files swept, finished run still generates, a second app on the "
            f"same workspace refused, {ak['runs_lost']} runs lost  "
            f"[{mark(passed('test_kill_9_mid_training_then_restart_recovers'))}]")

    # --- concurrency ---
    cc = test("test_concurrent_clients_while_training")["props"].get("concurrency", {})
    out("Concurrency")
    if cc:
        out(f"  {cc['clients']} clients while a job trains   {cc['requests']} requests (status {cc['status']}, list "
            f"{cc['list_runs']}, codes {cc['codes']}, scan {cc.get('scan', 0)}, generate {cc['generate']}; "
            f"{cc.get('polls_while_training', '?')} polls saw the job running), {cc['errors']} errors, no deadlock, "
            f"status p95 {cc['status_p95_ms']} ms; job finished")
        out(f"  simultaneous starts             {cc['simultaneous_starts']} at once -> {cc['jobs_started']} job  "
            f"[{mark(passed('test_concurrent_clients_while_training'))}]")

    # --- untrusted files ---
    bundle_refusals = [m for f, m in collector.refusals.get("test_hostile_bundles_refused_and_nothing_left_behind", [])
                       if f == "import_run"]
    loader_refusals = sum(len(v) for k, v in collector.refusals.items()
                          if k != "test_hostile_bundles_refused_and_nothing_left_behind")
    untrusted = [n for n, t in tests.items() if t["file"].endswith("test_untrusted_files.py")]
    pickle_ran = PWNED.exists() and not pwned_before
    out("Untrusted model files")
    out(f"  hostile bundle kinds refused    {len(bundle_refusals)} (path escapes, absolute paths, unknown files, "
        f"no manifest, pickle, zip bomb, not a zip), nothing left in the workspace  "
        f"[{mark(passed('test_hostile_bundles_refused_and_nothing_left_behind'))}]")
    out(f"  hostile model files refused     {loader_refusals} (pickle payloads, wrong shapes/dtypes, absurd sizes "
        f"before allocation, malformed manifests, out-of-range codes); pickle payload executed: "
        f"{'YES' if pickle_ran else 'never'}  [{mark(passed(*untrusted) and not pickle_ran)}]")

    # --- disk full ---
    disk = [n for n, t in tests.items() if t["file"].endswith("test_disk_full.py")]
    out("Disk full")
    out(f"  {sum(test(n)['outcome'] == 'passed' for n in disk)}/{len(disk)} cases held: clear message, no corrupt "
        f"file, earlier files intact, the next run works  [{mark(passed(*disk) and bool(disk))}]")

    # --- server ---
    fr = test("test_binds_localhost_and_serves_nothing_outside")["props"].get("file_routes", {})
    out("Server")
    if fr:
        out(f"  listens on {fr['listen']} only; {fr['hostile_urls']} hostile file requests (absolute, ../, "
            f"%-encoded, links out of the workspace) -> {fr['served']} served; oversize upload refused "
            f"(HTTP 413); foreign Host header (DNS rebinding) refused: "
            f"{'yes' if fr.get('foreign_host_refused') else 'no'}  "
            f"[{mark(passed('test_binds_localhost_and_serves_nothing_outside', 'test_hostile_uploads_and_archives'))}]")

    security_report(out, test, passed)

    failed = [n for n, t in tests.items() if t["outcome"] != "passed"]
    out("-" * 78)
    out(f"{len(tests) - len(failed)}/{len(tests)} checks passed" + (", nothing lost." if not failed else
                                                                     f"; FAILED: {', '.join(failed)}"))
    print("\n".join(lines))
    for n in failed:
        print(f"\n--- {n} ---\n{tests[n].get('error', '')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"tests": tests, "refusals": collector.refusals, "wall_s": wall}, indent=1))
    return 0 if code == 0 and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
