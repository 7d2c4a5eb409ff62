"""`robot-rl lake ...`: the lake's command line. Every command prints a human-readable summary,
or JSON with ``--json``. The lake is ``--lake URI`` (default: $ROBOT_RL_LAKE or ./lake)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections.abc import Callable
from typing import Any

from data_lake.episode import Episode, iter_episode_paths
from data_lake.lake import DEFAULT_URI, Lake, LakeError, write_quarantine_report

Handler = Callable[[argparse.Namespace], Any]


def _lake_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lake",
        default=os.environ.get("ROBOT_RL_LAKE", DEFAULT_URI),
        help="lake URI: a path, memory://name or s3://bucket/prefix (default: $ROBOT_RL_LAKE or ./lake)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-v", "--verbose", action="store_true", help="on errors, every problem found (and the traceback)")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=1, default=str) if args.json else text)


# ---------------------------------------------------------------------------- handlers
def cmd_init(a: argparse.Namespace) -> None:
    uri = a.uri or a.lake
    lake = Lake.create(uri)
    snap = lake.resolve("main")
    _emit(a, {"uri": uri, "snapshot_id": snap}, f"created lake {uri} (snapshot {snap}, branch main)")


def cmd_info(a: argparse.Namespace) -> None:
    d = Lake.open(a.lake).info(a.ref)
    ratio = d["raw_bytes"] / d["stored_bytes"] if d["stored_bytes"] else float("nan")
    lines = [
        f"lake      {d['uri']}",
        f"ref       {d['ref']} -> snapshot {d['snapshot_id']}",
        f"episodes  {d['episodes']}   steps {d['steps']}   segments {d['segments']}",
        f"bytes     raw {_human_bytes(d['raw_bytes'])} in this snapshot; "
        f"{_human_bytes(d['stored_bytes'])} stored for all history (ratio {ratio:.2f})",
        f"branches  {', '.join(d['branches'])}",
        f"tags      {', '.join(d['tags']) or '-'}",
        "tasks",
        *[f"  {n:6d}  {t or '(none)'}" for t, n in d["tasks"].items()],
        "schema",
    ]
    schema = d["schema"] or {"step": {}, "goal": {}}
    for part in ("step", "goal"):
        for k, s in schema[part].items():
            lines.append(f"  {part:4s} {k:28s} {s['dtype']:8s} {tuple(s['shape'])}")
    if d["schema"] is None:
        lines.append("  (none yet: the first append fixes it)")
    _emit(a, d, "\n".join(lines))


def cmd_log(a: argparse.Namespace) -> None:
    log = Lake.open(a.lake).log(a.ref, limit=a.n)
    lines = []
    for c in log:
        when = c.written_at[:19].replace("T", " ")
        delta = f"+{c.episodes_added} -{c.episodes_removed} = {c.episodes_total}"
        lines.append(f"{c.snapshot_id}  {when}  {c.operation or '-':8s} {delta:16s} {c.author:18s} {c.message}")
    _emit(a, [c.__dict__ for c in log], "\n".join(lines))


def cmd_append(a: argparse.Namespace) -> None:
    paths = list(iter_episode_paths(a.paths))
    eps = [Episode.load(p) for p in paths]
    lake = Lake.open(a.lake)
    res = lake.append(
        eps,
        branch=a.branch,
        message=a.message,
        skip_invalid=a.skip_invalid,
        allow_new_fields=a.allow_new_fields,
        author=a.author,
        labels=[str(p) for p in paths],
    )
    d = res.to_json()
    text = (
        f"appended {res.added} episodes to {a.branch} (snapshot {res.snapshot_id}); "
        f"skipped {res.skipped_duplicates} already present"
    )
    if res.quarantined:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        report = write_quarantine_report(a.quarantine or f"quarantine-{stamp}.json", res)
        d["quarantine_report"] = str(report)
        text += f"; quarantined {len(res.quarantined)} (report: {report})"
    _emit(a, d, text)


def cmd_ingest(a: argparse.Namespace) -> None:
    from data_lake.ingest import IngestError, IngestRejected, ingest, load_mapping, write_report
    from data_lake.ingest.mapping import default_mapping

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    try:
        mapping = load_mapping(a.mapping) if a.mapping else default_mapping(a.format)
        rep = ingest(
            a.paths,
            mapping,
            Lake.open(a.lake),
            fmt=a.format,
            branch=a.branch,
            message=a.message,
            author=a.author,
            skip_invalid=a.skip_invalid,
            allow_new_fields=a.allow_new_fields,
            progress=not (a.json or a.quiet),
        )
    except (IngestRejected, IngestError) as e:  # a rejection, or a bad mapping / path / --format
        notes = e.notes if isinstance(e, IngestRejected) else [e.note]
        if a.quarantine and isinstance(e, IngestRejected):
            write_report(a.quarantine, notes)
        if a.json:  # scripts get the problems on stdout too; the error line still goes to stderr
            out = {"ok": False, "error": str(e), "problems": [n.to_json() for n in notes]}
            print(json.dumps({**out, "quarantine_report": a.quarantine}, indent=1, default=str))
        raise
    d = {"ok": True, **rep.to_json()}
    added = rep.result.added if rep.result else 0
    dups = rep.result.skipped_duplicates if rep.result else 0
    text = (
        f"ingested {rep.frames} steps in {rep.episodes} episodes from {len(rep.files)} {rep.format} source(s) "
        f"in {rep.seconds:.1f} s: added {added} to {a.branch} (snapshot {rep.snapshot_id}); "
        f"skipped {dups} duplicate episodes and {len(rep.skipped_files)} already-ingested source(s)"
    )
    if rep.warnings:
        text += f"; {len(rep.warnings)} warning(s) (in each episode's metadata.ingest.warnings)"
    if rep.quarantined:
        report = write_report(a.quarantine or f"quarantine-{stamp}.json", rep.quarantined)
        d["quarantine_report"] = str(report)
        text += f"; quarantined {len(rep.quarantined)} problem(s) (report: {report})"
    if rep.sync:
        text += "\nsync error per stream (age of the sample used at each tick; ticks dropped as stale)"
        for name, s in rep.sync.items():
            ages = f"mean {s['age_ms_mean']:8.2f} ms  max {s['age_ms_max']:8.2f} ms"
            text += f"\n  {name:32s} {ages}  {s['stale_ticks']} stale"
    _emit(a, d, text)


def cmd_export(a: argparse.Namespace) -> None:
    out = Lake.open(a.lake).export(a.out_dir, ref=a.ref, task=a.task, episode_ids=a.episode or None)
    _emit(a, [str(p) for p in out], f"exported {len(out)} episodes to {a.out_dir}")


def cmd_tag(a: argparse.Namespace) -> None:
    snap = Lake.open(a.lake).tag(a.name, a.ref)
    _emit(a, {"tag": a.name, "snapshot_id": snap}, f"tag {a.name} -> {snap}")


def cmd_branch(a: argparse.Namespace) -> None:
    snap = Lake.open(a.lake).branch(a.name, a.ref)
    _emit(a, {"branch": a.name, "snapshot_id": snap}, f"branch {a.name} -> {snap}")


def cmd_checkout(a: argparse.Namespace) -> None:
    view = Lake.open(a.lake).checkout(a.ref)
    d = {"ref": a.ref, "snapshot_id": view.snapshot_id, "episodes": len(view)}
    _emit(
        a,
        d,
        f"{a.ref} -> snapshot {view.snapshot_id} ({len(view)} episodes), read-only.\n"
        f"Pin it in code: Lake.open({a.lake!r}).checkout({view.snapshot_id!r}), "
        f"or in configs: lake.ref={view.snapshot_id}",
    )


def cmd_copy(a: argparse.Namespace) -> None:
    from data_lake.copy import copy_lake

    r = copy_lake(a.src, a.dst)
    refs = ", ".join(f"{k}={v}" for k, v in sorted(r.refs.items()))
    _emit(a, r.to_json(), f"copied {r.src} -> {r.dst}: {r.objects} objects, {_human_bytes(r.bytes)}; refs {refs}")


def cmd_diff(a: argparse.Namespace) -> None:
    d = Lake.open(a.lake).diff(a.a, a.b)
    lines = [f"{a.a} ({d['from']}) -> {a.b} ({d['to']}): +{len(d['added'])} -{len(d['removed'])} episodes"]
    lines += [f"+ {e}" for e in d["added"]] + [f"- {e}" for e in d["removed"]]
    _emit(a, d, "\n".join(lines))


def cmd_verify(a: argparse.Namespace) -> int:
    """Exit 0 when the snapshot verifies, 1 when anything is damaged (every finding listed, then
    how to recover), 2 for usage errors (no such lake or ref)."""
    from data_lake.segment import error_summary

    lake: Lake | None = None
    try:
        lake = Lake.open(a.lake)
        rep = lake.verify(a.ref, progress=not a.json)
    except (LakeError, KeyError, ValueError, OSError):
        raise  # no lake there, unknown ref, bad URI, ...: run() prints them
    except Exception as e:  # damage verify could not attribute (the branch's snapshot itself): no traceback
        msg = f"verify {a.ref} could not complete: {error_summary(e)}"
        hint = _verify_recovery(a, lake, [])
        _emit(a, {"ok": False, "problems": [msg], "recovery": hint}, "\n".join([msg, "", *hint]))
        return 1
    d = rep.to_json()
    head = f"verify {a.ref} (snapshot {rep.snapshot_id}): {rep.episodes_checked} episodes, "
    if rep.ok:
        _emit(a, d, head + "OK")
        return 0
    counts = [
        (len(rep.damaged_episodes), "damaged episode", "damaged episodes"),
        (len(rep.damaged_chunks), "unreadable chunk", "unreadable chunks"),
        (len(rep.damaged_segments), "damaged segment", "damaged segments"),
    ]
    found = [f"{n} {one if n == 1 else many}" for n, one, many in counts if n]
    lines = [head + "FAILED: " + (", ".join(found) or f"{len(rep.problems)} problems")]
    listed: set[str] = set()
    for title, items in (
        ("damaged segments", rep.damaged_segments),
        ("unreadable chunks", rep.damaged_chunks),
        ("damaged episodes", rep.damaged_episodes),
    ):
        if items:
            lines.append(f"{title}:")
            lines += [f"  {it['message']}" for it in items]
            listed |= {it["message"] for it in items}
    other = [p for p in rep.problems if p not in listed]
    if other:
        lines += ["other problems:", *(f"  {p}" for p in other)]
    d["recovery"] = _verify_recovery(a, lake, [e["episode_id"] for e in rep.damaged_episodes])
    _emit(a, d, "\n".join([*lines, "", *d["recovery"]]))
    return 1


def _verify_recovery(a: argparse.Namespace, lake: Lake | None, damaged: list[str]) -> list[str]:
    """The ways out of a failed verify, as commands to run (verify itself changed nothing)."""
    lk = f"--lake {a.lake}"
    ref = a.ref.removeprefix("branch:")
    branch = ref if lake is not None and ref in lake.branches() else "BRANCH"
    out = [
        "How to recover (verify only reads: nothing was changed):",
        "  1. go back to an earlier snapshot that verifies OK. Snapshots holding these episodes share",
        "     their chunk files and are damaged too: look for one from before they were appended",
        f"       robot-rl lake log {lk} --ref {a.ref}",
        f"       robot-rl lake verify {lk} --ref tag:NAME      (or --ref snapshot:ID from the log)",
        "     then branch from the good one and pin training to it",
        f"       robot-rl lake branch {lk} repaired --ref tag:GOOD",
        "       robot-rl pretrain ... lake.ref=tag:GOOD",
    ]
    if damaged:
        unique = list(dict.fromkeys(damaged))
        out += [
            f"  2. or delete the {len(unique)} damaged episode{'s' if len(unique) > 1 else ''} as a new commit; "
            "older snapshots are unchanged",
            "     (they still hold them and still report the damage); re-append them from their source",
            "     files, if you have them, to get them back with the same ids",
            f"       robot-rl lake delete {lk} --branch {branch} " + " ".join(f"--episode {e}" for e in unique),
        ]
    return out


def cmd_compact(a: argparse.Namespace) -> None:
    res = Lake.open(a.lake).compact(branch=a.branch, target_steps=a.target_steps, message=a.message)
    text = (
        f"compacted {res.segments_before} segments into {res.segments_after} (snapshot {res.snapshot_id})"
        if res.snapshot_id
        else "nothing to compact"
    )
    _emit(a, res.to_json(), text)


def cmd_delete(a: argparse.Namespace) -> None:
    if not a.episode and not a.task:
        raise ValueError("delete needs --episode ID (repeatable) or --task NAME")
    res = Lake.open(a.lake).delete(episode_ids=a.episode or None, task=a.task, branch=a.branch, message=a.message)
    _emit(
        a,
        res.to_json(),
        f"deleted {res.removed} episodes from {a.branch} (snapshot {res.snapshot_id}); "
        "earlier snapshots still hold them",
    )


def cmd_label(a: argparse.Namespace) -> None:
    lake = Lake.open(a.lake)
    if a.detector is not None:  # a learned success detector (robot-rl detector train) over the stored images
        from robot_rl.detectors import SuccessDetector
        from robot_rl.detectors.label import label_with_detector

        det = SuccessDetector.load(a.detector)
        if a.task != det.task:
            raise ValueError(f"--task {a.task}, but detector {det.detector_id} ({a.detector}) calls {det.task!r}")
        source = a.source or det.detector_id
        res = label_with_detector(
            lake, det, a.detector, source=source, branch=a.branch, overwrite=a.overwrite, progress=not a.json
        )
        what = f"{a.task} (source {source}: detector {det.detector_id}, threshold {det.threshold:.3f})"
    else:
        from tasks.label import detector_over_states

        if a.source not in (None, "sim"):
            raise ValueError(
                f"--source {a.source}: without --detector this command stores the simulator's labels (source sim); "
                "human labels come from `robot-rl lake annotate`"
            )
        detect = detector_over_states(a.task)
        res = lake.label(a.task, detect, branch=a.branch, overwrite=a.overwrite, progress=not a.json)
        what = a.task
    text = (
        f"labelled {what} on {res.segments_after} segments of {a.branch} (snapshot {res.snapshot_id})"
        if res.snapshot_id
        else f"every segment of {a.branch} already has {what} labels (--overwrite to redo)"
    )
    _emit(a, res.to_json(), text)


ANNOTATION_FIELDS = ("episode", "step", "success")
_TRUE, _FALSE = {"1", "true", "yes", "y", "t"}, {"0", "false", "no", "n", "f"}


def read_annotations(path: str) -> list[tuple[str, int, bool]]:
    """Rows (episode_id, step, success) of a CSV file (header ``episode,step,success``) or a JSON
    list of ``{"episode", "step", "success"}``; a malformed row raises ValueError naming the file,
    the row (CSV: its line), the field and what was expected."""
    import csv
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json") or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); expected a list of {{episode, step, success}}") from e
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of {{episode, step, success}} objects")
        rows: list[tuple[int, Any]] = list(enumerate(data))
        what = "item"
    else:
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in reader.fieldnames or []]
        if not set(ANNOTATION_FIELDS) <= set(header):
            raise ValueError(
                f"{path}: header must hold {','.join(ANNOTATION_FIELDS)}, got {','.join(header) or '(empty)'}"
            )
        rows = [(reader.line_num, {k.strip(): v for k, v in r.items() if k is not None}) for r in reader]
        rows = [(n, r) for n, r in rows if (r.get("success") or "").strip()]  # left blank: not labeled (--suggest)
        what = "line"
    out: list[tuple[str, int, bool]] = []
    for n, r in rows:
        where = f"{path}: {what} {n}"
        if not isinstance(r, dict) or any(f not in r or r[f] is None for f in ANNOTATION_FIELDS):
            raise ValueError(f"{where}: expected fields {', '.join(ANNOTATION_FIELDS)}, got {r!r}")
        eid, step, ok = r["episode"], r["step"], r["success"]
        if not isinstance(eid, str) or not eid.strip():
            raise ValueError(f"{where}: field episode: expected an episode id, got {eid!r}")
        if isinstance(step, str) and step.strip().isdigit():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{where}: field step: expected an integer >= 0, got {r['step']!r}")
        if isinstance(ok, str) and ok.strip().lower() in _TRUE | _FALSE:
            ok = ok.strip().lower() in _TRUE
        if not isinstance(ok, bool):
            raise ValueError(f"{where}: field success: expected true/false (or 1/0), got {r['success']!r}")
        out.append((eid.strip(), step, ok))
    return out


def cmd_annotate(a: argparse.Namespace) -> None:
    if a.suggest is not None:
        return suggest_annotations(a)
    if a.file is None:
        raise ValueError("lake annotate needs a FILE of labels (or --suggest N --detector CKPT to choose frames)")
    rows = read_annotations(a.file)
    res = Lake.open(a.lake).annotate(a.task, rows, source=a.source, branch=a.branch, message=a.message, author=a.author)
    n_eps = len({e for e, _, _ in rows})
    n_true = sum(ok for _, _, ok in rows)
    d = {**res.to_json(), "task": a.task, "source": a.source, "steps": len(rows), "episodes": n_eps, "success": n_true}
    text = (
        f"annotated {a.task} (source {a.source}): {len(rows)} steps ({n_true} success) of {n_eps} episodes "
        f"in {res.segments_after} segments of {a.branch} (snapshot {res.snapshot_id})"
    )
    _emit(a, d, text)


def suggest_annotations(a: argparse.Namespace) -> None:
    """The frames a detector is least sure of (margin |p − threshold|, lowest first), as a CSV to fill in."""
    import csv
    import io

    from robot_rl.detectors import SuccessDetector
    from robot_rl.detectors.label import uncertain_frames

    if a.detector is None:
        raise ValueError("--suggest ranks frames by a detector's margin: give --detector CKPT")
    det = SuccessDetector.load(a.detector)
    if a.task != det.task:
        raise ValueError(f"--task {a.task}, but detector {det.detector_id} ({a.detector}) calls {det.task!r}")
    rows = uncertain_frames(Lake.open(a.lake), a.ref, det, a.suggest)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*ANNOTATION_FIELDS, "p", "margin"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({"episode": r["episode"], "step": r["step"], "success": "", "p": f"{r['p']:.4f}",
                    "margin": f"{r['margin']:.4f}"})  # fmt: skip
    if a.out:
        from pathlib import Path

        Path(a.out).write_text(buf.getvalue())
    text = (
        f"{len(rows)} frames of {a.ref} where detector {det.detector_id} is least sure ({a.task}); fill in the "
        f"success column and run `robot-rl lake annotate --task {a.task} {a.out or 'FILE'}`"
        + ("" if a.out else "\n" + buf.getvalue().rstrip())
    )
    _emit(a, rows, text)


def cmd_labels(a: argparse.Namespace) -> None:
    sets = Lake.open(a.lake).checkout(a.ref).label_sets()
    lines = []
    for d in sets:
        prov = {k: v for k, v in d["provenance"].items() if k not in ("source", "parts")}
        if "parts" in d["provenance"]:
            prov["parts"] = len(d["provenance"]["parts"])
        conf = "confidence" if d["confidence"] else "no confidence"
        lines.append(
            f"{d['task']:28s} {d['source']:20s} {len(d['segments'])}/{d['of_segments']} segments, {d['steps']} steps, "
            f"{conf}  {json.dumps(prov, sort_keys=True)}"
        )
    _emit(a, sets, "\n".join(lines) or f"no label sets in {a.ref}")


GC_MAX_LISTED = 50  # files printed by `lake gc` (all of them with --json)


def cmd_gc(a: argparse.Namespace) -> None:
    from data_lake.gc import collect_garbage, format_age, parse_age

    min_age = parse_age(a.min_age, "--min-age")
    expire = a.expire_snapshots_older_than
    expire_age = parse_age(expire, "--expire-snapshots-older-than", bare_unit="d") if expire is not None else None
    rep = collect_garbage(Lake.open(a.lake), min_age=min_age, expire_older_than=expire_age, dry_run=a.dry_run)
    kinds = ", ".join(f"{n} {k.replace('_', ' ')[: None if n > 1 else -1]}" for k, n in rep.counts.items() if n)
    kinds = kinds or "nothing"
    verb = "dry run: would remove" if rep.dry_run else "removed"
    kept = f"objects younger than {format_age(min_age)} kept" if min_age else "no minimum age (--min-age 0)"
    if expire_age is not None:
        n = len(rep.expired_snapshots)
        kept += f"; {'would expire' if rep.dry_run else 'expired'} history older than {format_age(expire_age)}"
        kept += f" ({n} snapshot id{'s' * (n != 1)} {'would stop' if rep.dry_run else 'stopped'} resolving)"
    lines = [f"{verb} {kinds} ({_human_bytes(rep.bytes)}) from {rep.uri}; {kept}"]
    if rep.files is None:
        lines.append("(this storage lists no paths: Icechunk reports counts only)")
    else:
        lines += rep.files[:GC_MAX_LISTED]
        if len(rep.files) > GC_MAX_LISTED:
            lines.append(f"... and {len(rep.files) - GC_MAX_LISTED} more (--json lists all)")
    _emit(a, rep.to_json(), "\n".join(lines))


# ---------------------------------------------------------------------------- parser
def _add_write_options(p: argparse.ArgumentParser) -> None:
    """The options of commands that append episodes in one commit (append, ingest)."""
    p.add_argument("--branch", default="main")
    p.add_argument("-m", "--message", default=None)
    p.add_argument("--author", default=None)
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="commit the valid episodes and write a quarantine report for the others",
    )
    p.add_argument("--quarantine", default=None, help="quarantine report path (default: quarantine-<utc>.json)")
    p.add_argument("--allow-new-fields", action="store_true", help="let these episodes add fields to the schema")


def add_lake_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lake = sub.add_parser(
        "lake",
        help="the versioned episode lake: init, info, log, append, ...",
        description="Manage a versioned episode lake (Icechunk + Zarr v3).",
    )
    cmds = lake.add_subparsers(dest="lake_cmd", required=True, metavar="COMMAND")

    def add(name: str, fn: Handler, help: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help, description=help)
        _lake_arg(p)
        p.set_defaults(func=fn)
        return p

    p = add("init", cmd_init, "create an empty lake")
    p.add_argument("uri", nargs="?", help="where (default: --lake)")
    p = add("info", cmd_info, "episodes, steps, bytes, per-task counts and schema of a ref")
    p.add_argument("--ref", default="main", help="branch, tag or snapshot id (default: main)")
    p = add("log", cmd_log, "commits with messages, authors and episode counts")
    p.add_argument("--ref", default="main")
    p.add_argument("-n", type=int, default=None, help="show at most N commits")
    p = add("append", cmd_append, "append episodes (.npz files or episode directories) in one commit")
    p.add_argument("paths", nargs="+", help="episode .npz files, episode directories, or directories of them")
    _add_write_options(p)
    p = add("ingest", cmd_ingest, "ingest robot logs (MCAP, ROS bags, HDF5, LeRobot, Minari, OGBench) in one commit")
    p.add_argument("paths", nargs="+", help="log files, dataset directories, or directories of them")
    p.add_argument(
        "--mapping",
        default=None,
        help="mapping YAML (docs/ingest.md; examples in configs/ingest/); optional for --format ogbench",
    )
    p.add_argument(
        "--format",
        default=None,
        choices=["mcap", "ros1", "ros2", "robomimic", "aloha", "lerobot", "minari", "ogbench"],
        help="input format (default: the mapping's 'format')",
    )
    _add_write_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p = add("export", cmd_export, "write episodes as .npz files (the append format)")
    p.add_argument("out_dir")
    p.add_argument("--ref", default="main")
    p.add_argument("--task", default=None)
    p.add_argument("--episode", action="append", default=[], help="episode id (repeatable)")
    p = add("tag", cmd_tag, "create an immutable tag")
    p.add_argument("name")
    p.add_argument("--ref", default="main")
    p = add("branch", cmd_branch, "create a branch")
    p.add_argument("name")
    p.add_argument("--ref", default="main")
    p = add("checkout", cmd_checkout, "resolve a tag, branch or snapshot id to a pinned read-only view")
    p.add_argument("ref")
    help = "copy a lake with all branches, tags and history between local paths and s3:// (to a new, empty DST)"
    p = cmds.add_parser("copy", help=help, description=help + "; same snapshot ids in the copy (docs/scaling.md)")
    p.add_argument("src", help="the lake to copy: a path or s3://bucket/prefix")
    p.add_argument("dst", help="where: a path or s3://bucket/prefix that does not exist yet or is empty")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("-v", "--verbose", action="store_true", help="on errors, the traceback")
    p.set_defaults(func=cmd_copy)
    p = add("diff", cmd_diff, "episodes added and removed between two refs")
    p.add_argument("a")
    p.add_argument("b")
    p = add(
        "verify",
        cmd_verify,
        "read every chunk, recompute every episode's hash and check the layout; "
        "lists all damage and how to recover (exit 1)",
    )
    p.add_argument("--ref", default="main")
    p = add("compact", cmd_compact, "merge small segments (one commit; contents and hashes unchanged)")
    p.add_argument("--branch", default="main")
    p.add_argument("--target-steps", type=int, default=20_000)
    p.add_argument("-m", "--message", default=None)
    p = add("label", cmd_label, "store a task's per-step success labels (its detector over stored sim states)")
    p.add_argument("--task", required=True, help="task name (robot-rl collect --list-tasks)")
    p.add_argument("--branch", default="main")
    p.add_argument("--overwrite", action="store_true", help="relabel segments that already have labels")
    p.add_argument("--detector", default=None, help="a success detector (robot-rl detector train) to label with")
    p.add_argument(
        "--source",
        default=None,
        help="label source: sim (default, the simulator); with --detector its id (default) or a name shared by "
        "several tasks' detectors",
    )
    p = add(
        "annotate",
        cmd_annotate,
        "merge human success labels (CSV episode,step,success or a JSON list) into a task's label set, one commit",
    )
    p.add_argument(
        "file", nargs="?", help="CSV with header episode,step,success, or JSON [{episode, step, success}, ...]"
    )
    p.add_argument("--task", required=True, help="task the labels are for")
    p.add_argument(
        "--suggest", type=int, default=None, metavar="N", help="list the N frames --detector is least sure of"
    )
    p.add_argument("--detector", default=None, help="with --suggest: the success detector (robot-rl detector train)")
    p.add_argument("--ref", default="main", help="with --suggest: the snapshot to rank")
    p.add_argument("--out", default=None, help="with --suggest: write the CSV to fill in here")
    p.add_argument("--source", default="user", help="label source (default: user)")
    p.add_argument("--branch", default="main")
    p.add_argument("-m", "--message", default=None)
    p.add_argument("--author", default=None)
    p = add("labels", cmd_labels, "list the stored label sets: task, source, provenance, segments covered")
    p.add_argument("--ref", default="main")
    p = add("delete", cmd_delete, "delete episodes by id or task as a new commit")
    p.add_argument("--episode", action="append", default=[], help="episode id (repeatable)")
    p.add_argument("--task", default=None)
    p.add_argument("--branch", default="main")
    p.add_argument("-m", "--message", default=None)
    p = add("gc", cmd_gc, "delete objects no branch or tag reaches (chunks of failed or killed writes)")
    p.description = (
        "Garbage-collect the lake: delete chunks, manifests, snapshots and transaction logs that no branch, "
        "tag or ancestor of either references, above all the chunks of appends that failed or were killed "
        "before their commit. Holds the commit lock while it runs. Branches, tags and the history of both are "
        "kept, so every snapshot id in `robot-rl lake log` keeps resolving (unless you expire snapshots)."
    )
    p.add_argument(
        "--min-age",
        default="1d",
        metavar="AGE",
        help="never delete objects younger than this: 0, 30m, 12h, 1d, 2w (default: 1d). A writer in another "
        "process has written chunks its commit has not referenced yet; deleting them would break that commit. "
        "Use 0 only when no writer is running",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed and remove nothing")
    p.add_argument(
        "--expire-snapshots-older-than",
        metavar="DAYS",
        default=None,
        help="also cut history older than DAYS (a number of days, or 12h, 2w) from every branch and tag first, "
        "then delete what only that history held. WARNING: snapshot ids older than that stop resolving unless a "
        "tag or branch points at them, so checkpoints pinned to them (lake.ref=<snapshot id>) can no longer "
        "reload their data; tag those snapshots first. Branches and tags are never deleted. Default: no expiry",
    )
    from robot_rl.commands.view import add_view_parser

    add_view_parser(cmds, _lake_arg)
    from robot_rl.commands.serve import add_serve_parser

    add_serve_parser(cmds, _lake_arg)
