"""What the page shows, as HTML and table rows: the tier card, the training status card, warnings and
codebook verdicts, the file report's pages, the runs and samples tables, and the page's CSS.

Pure functions of plain data (no Gradio, no torch), so they are cheap and easy to test.
"""
from __future__ import annotations

import html
from typing import Any

from distill.app import figures
from distill.events import Stage
from distill.learning import judge_manifest

PAGE_SIZE = 50  # rows per page of the file report (a 500-file dataset stays light)


PIPELINE_STAGES = [(Stage.FEATURES, "Read audio"), (Stage.VQVAE, "Sound model"), (Stage.CODES, "Codes"),
                   (Stage.PRIOR, "Sequence model"), (Stage.ANALYSIS, "Check")]


# --- formatting -------------------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r:02d} s"
    h, r = divmod(int(round(s)), 3600)
    return f"{h} h {r // 60:02d} min"


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


class Html(str):
    """Markup built by `render` (or a literal tag): `render` inserts it as it is, and escapes everything else."""


def render(template: str, **values: Any) -> Html:
    """`template.format(**values)` with every value escaped unless it is `Html`.

    The one place where page markup meets data from files (manifests and metrics may come from a
    stranger's bundle): a card never escapes by hand, so a new field cannot be forgotten."""
    return Html(template.format(**{k: v if isinstance(v, Html) else esc(v) for k, v in values.items()}))


def _join(parts: list[Html], sep: str = "") -> Html:
    return Html(sep.join(parts))


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "—"


# --- cards ------------------------------------------------------------------------------------------


DATASET_ERROR_TITLE = "Nothing to train on yet."
SETTINGS_ERROR_TITLE = "These settings cannot be used."


def tier_card_html(card: dict | None, edited: list[str] | None = None, error: str | None = None,
                   title: str = DATASET_ERROR_TITLE) -> str:
    """The tier card; `error` replaces it, headed by `title` (a dataset problem or a settings problem)."""
    if error:
        return render('<div class="d-card d-empty d-error"><b>{title}</b><br>{error}</div>', title=title, error=error)
    if not card:
        return ('<div class="d-card d-empty"><b>No dataset yet.</b><br>Drop a folder of sounds on the left, '
                'type a path, or try the demo. The tier Distill picks for it will appear here.</div>')
    vq = (card.get("settings") or {}).get("vqvae") or {}
    pr = (card.get("settings") or {}).get("prior") or {}
    tier = int(card.get("tier") or 1)
    reasons = _join([render("<li>{r}</li>", r=r) for r in card.get("reasons") or []])
    warnings = _join([render('<div class="d-warn">⚠ {w}</div>', w=w) for w in card.get("warnings") or []])
    budget = (vq.get("time_budget_s") or 0) + (pr.get("time_budget_s") or 0)
    edited_note = render('<div class="d-muted">Edited: {e}</div>', e=", ".join(edited)) if edited else Html("")
    return render("""
<div class="d-card d-tier">
  <div class="d-tier-head">
    <span class="d-badge d-t{tier}">Tier {tier}</span>
    <span class="d-tier-name">{name}</span>
    <span class="d-eta" title="Upper estimate: each model stops at its time budget or earlier">≈ {eta}
      on {device}</span>
  </div>
  <ul class="d-reasons">{reasons}</ul>
  <div class="d-grid">
    <div><div class="d-k">Sound model (VQ-VAE)</div>
      <div class="d-v">{codes} codes × {levels} levels ·
      {channels} channels · time ÷{down}</div></div>
    <div><div class="d-k">Sequence model (prior)</div>
      <div class="d-v">{layers} layers × {width} wide ·
      {heads} heads · dropout {dropout} · lr {lr}</div></div>
    <div><div class="d-k">Held out for checking</div>
      <div class="d-v">{held} % of files</div></div>
    <div><div class="d-k">Time budget</div>
      <div class="d-v">{budget} of training (sound model {vq_budget},
      sequence model {pr_budget})</div></div>
  </div>
  {edited_note}
  {warnings}
</div>""", tier=tier, name=card.get("name", ""), eta=fmt_duration(card.get("eta_s")),
                  device=card.get("device") or "this machine", reasons=reasons, codes=vq.get("codebook_size"),
                  levels=vq.get("num_quantizers"), channels=vq.get("hidden_channels"), down=vq.get("downsample"),
                  layers=pr.get("num_layers"), width=pr.get("hidden_size"), heads=pr.get("num_heads"),
                  dropout=pr.get("dropout"), lr=_num(pr.get("learning_rate"), "{:g}"),
                  held=round(float(pr.get("val_fraction") or 0) * 100), budget=fmt_duration(budget),
                  vq_budget=fmt_duration(vq.get("time_budget_s")), pr_budget=fmt_duration(pr.get("time_budget_s")),
                  edited_note=edited_note, warnings=warnings)


def status_card_html(snap: dict | None, run_id: str | None = None, manifest: dict | None = None) -> str:
    """The training panel's head: stages, progress bar, ETA, device and message; once the run has been
    checked, what the sequence model learned (distill.learning). `manifest`: the run's, when finished."""
    if snap and snap.get("run_id") and snap.get("run_id") == run_id and snap.get("state") != "idle":
        return _job_card(snap, manifest)
    if manifest:
        return _manifest_card(run_id or "", manifest)
    return ('<div class="d-card d-empty"><b>No training yet.</b><br>Scan a dataset, check its tier card, '
            'then press <i>Start training</i>. You can close this tab: training goes on, and the page reattaches.</div>')


def _chips(stages: list[tuple[str, str]], done: set[str], current: str | None, state: str,
           stopped: dict | None = None, doubtful: set[str] = frozenset()) -> Html:
    """One chip per stage. `stopped`: {stage: step or None} that ended on a stop; `doubtful`: finished
    stages whose result is poor (a sequence model that learned little)."""
    out = []
    stopped = stopped or {}
    for key, label in stages:
        if key in stopped:
            step = stopped[key]
            cls, mark = "stop", "■"
            label = f"{label} — stopped" + (f" at step {step}" if isinstance(step, int) else "")
        elif key in done and key in doubtful:
            cls, mark = "meh", "!"
        elif key in done:
            cls, mark = "done", "✓"
        elif key == current and state in ("running", "stopping"):
            cls, mark = "now", "●"
        elif key == current and state == "failed":
            cls, mark = "fail", "✗"
        else:
            cls, mark = "todo", "○"
        out.append(render('<span class="d-chip d-{cls}">{mark} {label}</span>', cls=cls, mark=mark, label=label))
    return _join(out, '<span class="d-sep">→</span>')


def _job_card(snap: dict, manifest: dict | None = None) -> str:
    state = str(snap.get("state", "idle"))
    stages = PIPELINE_STAGES if snap.get("job") != "retrain" else PIPELINE_STAGES[3:]
    stopped = snap.get("stages_stopped") if isinstance(snap.get("stages_stopped"), dict) else {}
    done = set(snap.get("stages_done") or []) - set(stopped)
    if state == "done":
        done |= {k for k, _ in stages}
    verdict = judge_manifest(manifest) if state == "done" else None  # a stopped model is not judged: it can go on
    frac = float(snap.get("fraction") or 0.0)
    pct = 100.0 if state == "done" else min(frac * 100, 99.0)  # only a finished run shows a full bar
    latest = snap.get("latest") or {}
    detail = ""
    stage = snap.get("stage")
    if state in ("running", "stopping"):
        if stage == Stage.VQVAE and "vqvae_step" in latest:
            ev = latest["vqvae_step"]
            detail = f"step {ev.get('step')} · reconstruction loss {_num(ev.get('recon_loss', ev.get('loss')))}"
        elif stage == Stage.PRIOR and "prior_step" in latest:
            ev = latest["prior_step"]
            tps = ev.get("tokens_per_s")
            detail = f"step {ev.get('step')} · loss {_num(ev.get('loss'))}" + (f" · {tps:,.0f} tokens/s" if isinstance(tps, (int, float)) else "")
        head = render('<b>{label}</b>{detail}<span class="d-right">{eta}</span>', label=snap.get("stage_label", ""),
                      detail=render(' <span class="d-muted">· {d}</span>', d=detail) if detail else Html(""),
                      eta=eta_words(snap))
    else:
        words = {"done": "Finished", "stopped": "Stopped", "failed": "Failed"}.get(state, state)
        head = render('<b>{words}</b> <span class="d-muted">after {elapsed}</span><span class="d-right">{run}</span>',
                      words=words, elapsed=fmt_duration(snap.get("elapsed_s")), run=snap.get("run_id", ""))
    bar_cls = {"failed": "d-bar-fail", "stopped": "d-bar-stop"}.get(state, "")
    msg = snap.get("message") or ""
    msg_html = render('<div class="d-msg d-msg-{state}">{msg}</div>', state=state, msg=msg) if msg else Html("")
    return render("""
<div class="d-card d-status" data-state="{state}">
  <div class="d-chips">{chips}</div>
  <div class="d-line">{head}</div>
  <div class="d-bar {bar_cls}"><div style="width:{width}%"></div></div>
  <div class="d-line d-small"><span class="d-pct">{pct} %</span>
    <span class="d-right">Device: <b>{device}</b> · elapsed {elapsed}</span></div>
  {msg_html}
  {learned}
</div>""", state=state, chips=_chips(stages, done, stage, state, stopped, _doubtful(verdict)), head=head,
                  bar_cls=bar_cls, width=f"{pct:.1f}", pct=f"{pct:.0f}", device=snap.get("device") or "—",
                  elapsed=fmt_duration(snap.get("elapsed_s")), msg_html=msg_html, learned=learned_html(verdict))


def eta_words(snap: dict) -> str:
    """The time left (distill/progress.py: this stage's measured speed, then the stages still to come)."""
    eta, stage_eta = snap.get("eta_s"), snap.get("stage_eta_s")
    if eta is None:
        return "estimating…"
    if stage_eta is not None and eta - stage_eta >= 1:
        return f"about {fmt_duration(stage_eta)} left in this stage · {fmt_duration(eta)} left in all"
    return f"about {fmt_duration(eta)} left"


def _doubtful(verdict) -> set[str]:
    """The chips that must not show green: the sequence model and the check that found it wanting."""
    return {Stage.PRIOR, Stage.ANALYSIS} if verdict is not None and not verdict.ok else set()


def learned_html(verdict) -> Html:
    """What the sequence model learned and what to do about it (distill.learning's verdict)."""
    if verdict is None:
        return Html("")
    advice = render('<div class="d-learned-advice"><b>What to do:</b> {a}</div>', a=verdict.advice) \
        if verdict.advice else Html("")
    return render('<div class="d-learned d-learned-{level}" data-learned="{level}"><div>{headline}</div>{advice}'
                  '<div class="d-muted d-small">{detail}</div></div>', level=verdict.level,
                  headline=verdict.headline, advice=advice, detail=verdict.detail)


def _manifest_card(run_id: str, m: dict) -> str:
    from distill.runs import run_summary

    shown = run_summary(m)  # typed and bounded: a stranger's manifest cannot break the card
    status = shown["status"]
    interrupted = status == "running"
    word = "Interrupted" if interrupted else {"done": "Finished", "stopped": "Stopped", "failed": "Failed"}.get(status, status)
    seconds = sum(shown["stage_seconds"].values())
    tier = shown["tier"]
    msg = ("The app was closed while this run trained; the stages that finished were kept."
           if interrupted else shown["message"])
    facts = " · ".join([f"run {run_id}", f"created {shown['created'] or '?'}", f"{shown['files_used']} files"]
                       + ([f"tier {tier}"] if tier else []) + ([f"{fmt_duration(seconds)} of training"] if seconds else []))
    done, stopped = _manifest_stages(m, shown)
    verdict = judge_manifest(m) if status == "done" else None
    return render("""
<div class="d-card d-status" data-state="{status}">
  <div class="d-chips">{chips}</div>
  <div class="d-line"><b>{word}</b> <span class="d-muted">· {facts}</span></div>
  {msg_html}
  {learned}
</div>""", status=status, chips=_chips(PIPELINE_STAGES, done, None, status, stopped, _doubtful(verdict)), word=word,
                  facts=facts, msg_html=render('<div class="d-msg">{msg}</div>', msg=msg) if msg else Html(""),
                  learned=learned_html(verdict))


def _manifest_stages(m: dict, shown: dict) -> tuple[set[str], dict]:
    """(finished stages, {stopped training stage: step}) of a saved run: its `stages_done` when it has
    them (a stage stopped half-way has seconds but is not done), else the stages that took time."""
    listed = m.get("stages_done")
    done = {s for s in listed if isinstance(s, str)} if isinstance(listed, list) else set(shown["stage_seconds"])
    done |= {Stage.FEATURES} & set(shown["stage_seconds"])  # the reading stage is never listed: it always reruns
    if shown["status"] == "done" and not done:
        done = set(shown["stage_seconds"])
    results = m.get("results") if isinstance(m.get("results"), dict) else {}
    stopped = {}
    for stage in (Stage.VQVAE, Stage.PRIOR):
        r = results.get(stage) if isinstance(results.get(stage), dict) else {}
        if r.get("stop") == "stopped" and stage not in done:
            step = r.get("steps")
            stopped[stage] = step if isinstance(step, int) and not isinstance(step, bool) else None
    return done, stopped


def notes_html(warnings: list[str], levels: list[dict]) -> str:
    """Warnings (the memorisation warning among them) and a plain verdict per codebook level."""
    parts = [render('<div class="d-warn">⚠ {w}</div>', w=w) for w in warnings]
    if levels:
        items = []
        for i, lv in enumerate(levels):
            u = float(lv.get("utilisation", 0.0))
            v = str(lv.get("verdict") or figures.verdict(u, lv.get("perplexity"), lv.get("codebook_size")))
            text = lv.get("explanation") or f"{u:.0%} of its codes in use."
            cls = {"healthy": "ok", "some codes unused": "meh", "collapse": "bad"}.get(v, "meh")
            name = str(lv.get("name") or f"level {i + 1}")
            items.append(render('<li><span class="d-dot d-{cls}"></span><b>{name}: {v}.</b> '
                                '<span class="d-muted">{text}</span></li>', cls=cls, name=name[:1].upper() + name[1:],
                                v=v, text=text))
        parts.append(render('<div class="d-health"><div class="d-k">Codebook health</div><ul>{items}</ul></div>',
                            items=_join(items)))
    if not parts:
        return ('<div class="d-card d-empty">Warnings (for example when the model starts memorising) and a plain '
                'verdict on each codebook level appear here while the model trains.</div>')
    return render('<div class="d-notes">{parts}</div>', parts=_join(parts))


# --- tables -----------------------------------------------------------------------------------------


def _filtered(entry, filt: str) -> list[list]:
    if filt == "used":
        return [r for r in entry.rows if r[0].endswith("used")]
    if filt == "skipped":
        return [r for r in entry.rows if r[0].endswith("skipped")]
    return entry.rows


def page_rows(entry, page: dict) -> tuple[list[list], str]:
    rows = _filtered(entry, page.get("filter", "all"))
    pages = max(1, (len(rows) + PAGE_SIZE - 1) // PAGE_SIZE)
    p = max(0, min(int(page.get("page", 0)), pages - 1))
    page["page"] = p
    lo = p * PAGE_SIZE
    return rows[lo:lo + PAGE_SIZE], f"Page {p + 1} of {pages} · {len(rows)} file{'s' if len(rows) != 1 else ''}"


def summary_md(entry) -> str:
    r = entry.report
    c = r.counts()
    reasons = c.get("skip_reasons") or {}
    skipped = ", ".join(f"{n} × {k}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    text = (f"**{esc(entry.label)}** — **{c['files_used']} used**, {c['files_skipped']} skipped · "
            f"{fmt_duration(r.total_seconds)} of audio in all")
    if skipped:
        text += f" · skipped: {esc(skipped)}"
    return text + f"  \n<span class='d-hint'>Folder: `{esc(entry.source)}`</span>"


def runs_rows(runs: list[dict]) -> list[list]:
    yes = lambda b: "✓" if b else "—"  # noqa: E731
    return [[r["id"], r.get("title") or "", r.get("created") or "", r.get("status", ""), r.get("tier") or "",
             r.get("files_used", ""),
             yes(r.get("has_vqvae")), yes(r.get("has_prior")), str(r.get("source") or r.get("problem") or "")]
            for r in runs]


def samples_rows(samples: list[dict]) -> list[list]:
    rows = []
    for s in samples:
        st = s.get("settings") or {}
        rows.append([s.get("created", ""), s.get("id", ""), s.get("seconds", ""), st.get("temperature", ""),
                     st.get("top_k", ""), st.get("top_p", ""), st.get("seed", ""), st.get("prompt_file") or ""])
    return rows


# --- look -------------------------------------------------------------------------------------------

CSS = """
.gradio-container { max-width: 1380px !important; }
#d-header { display:flex; align-items:center; gap:14px; padding: 4px 2px 10px; border-bottom: 1px solid var(--border-color-primary); margin-bottom: 6px; }
#d-header .d-logo { width:36px; height:36px; border-radius:9px; background: linear-gradient(135deg,#4f46e5,#0ea5e9); display:flex; align-items:center; justify-content:center; color:white; font-weight:700; font-size:20px; }
#d-header h1 { font-size: 22px; margin:0; line-height:1.1; }
#d-header .d-sub { color: var(--body-text-color-subdued); font-size: 13px; }
.d-card { border:1px solid var(--border-color-primary); border-radius:10px; padding:12px 14px; background: var(--block-background-fill); font-size:14px; }
.d-empty { color: var(--body-text-color-subdued); text-align:left; padding:18px; }
.d-error { border-color:#e5a3a3; background:#fff6f6; color:#7a1f1f; }
.d-tier-head { display:flex; align-items:center; gap:10px; flex-wrap:wrap; margin-bottom:6px; }
.d-badge { font-weight:700; border-radius:6px; padding:2px 8px; color:white; font-size:13px; }
.d-t1 { background:#0ea5e9; } .d-t2 { background:#6366f1; } .d-t3 { background:#a855f7; }
.d-tier-name { font-weight:600; font-size:15px; }
.d-eta { margin-left:auto; color: var(--body-text-color-subdued); font-size:13px; }
.d-reasons { margin: 4px 0 8px 18px; padding:0; font-size:13px; }
.d-reasons li { margin: 2px 0; }
.d-grid { display:grid; grid-template-columns: 1fr 1fr; gap:6px 18px; font-size:13px; margin: 6px 0; }
.d-k { color: var(--body-text-color-subdued); font-size:12px; text-transform:uppercase; letter-spacing:.03em; }
.d-warn { background:#fff8e6; border:1px solid #f3d48b; color:#6b4b00; border-radius:7px; padding:6px 9px; margin-top:6px; font-size:13px; }
.d-muted { color: var(--body-text-color-subdued); }
.d-chips { display:flex; align-items:center; flex-wrap:wrap; gap:4px; margin-bottom:8px; }
.d-chip { border-radius:999px; padding:2px 10px; font-size:12.5px; border:1px solid var(--border-color-primary); }
.d-chip.d-done { background:#e8f6ee; border-color:#9fd5b5; color:#17603a; }
.d-chip.d-now { background:#eef0ff; border-color:#a5acf5; color:#3730a3; font-weight:600; }
.d-chip.d-fail { background:#fdecec; border-color:#eba5a5; color:#8a1c1c; }
.d-chip.d-todo { color: var(--body-text-color-subdued); }
.d-chip.d-stop { background:#f1f2f4; border-color:#b8bcc4; color:#374151; }
.d-chip.d-meh { background:#fff8e6; border-color:#f3d48b; color:#6b4b00; }
.d-learned { margin-top:8px; padding:8px 10px; border-radius:7px; font-size:13.5px; line-height:1.45; }
.d-learned-little { background:#fff8e6; border:1px solid #f3d48b; color:#4d3600; }
.d-learned-some { background:#f3f6fb; border:1px solid #c9d5ea; }
.d-learned-clear { background:#e8f6ee; border:1px solid #9fd5b5; color:#17603a; }
.d-learned-advice { margin-top:4px; }
.d-sep { color: var(--body-text-color-subdued); font-size:12px; }
.d-line { display:flex; align-items:baseline; gap:6px; margin:4px 0; }
.d-right { margin-left:auto; }
.d-small { font-size:12.5px; color: var(--body-text-color-subdued); }
.d-bar { height:10px; border-radius:6px; background: var(--background-fill-secondary); overflow:hidden; border:1px solid var(--border-color-primary); }
.d-bar > div { height:100%; background: linear-gradient(90deg,#4f46e5,#0ea5e9); }
.d-bar-fail > div { background:#dc2626; } .d-bar-stop > div { background:#9ca3af; }
.d-msg { margin-top:6px; font-size:13px; }
.d-msg-failed { color:#991b1b; }
.d-hint { color: var(--body-text-color-subdued); font-size: 12.5px; }
#d-drop .dz { border:2px dashed #9aa5c4; border-radius:12px; padding:26px 16px; text-align:center; background: linear-gradient(180deg, #f8faff, #f2f5fc); transition: all .15s; }
#d-drop .dz[data-over="1"] { border-color:#4f46e5; background:#eef0ff; }
#d-drop .dz[data-state="error"] .dz-status { color:#b91c1c; }
#d-drop .dz[data-state="done"] .dz-status { color:#15803d; }
#d-drop .dz-icon { font-size:30px; line-height:1; color:#4f46e5; }
#d-drop .dz-title { font-size:17px; font-weight:600; margin-top:6px; }
#d-drop .dz-sub { color:#5b6275; font-size:13px; margin-top:2px; }
#d-drop .dz-buttons { margin-top:12px; display:flex; gap:8px; justify-content:center; flex-wrap:wrap; }
#d-drop .dz-btn { cursor:pointer; border:1px solid #c7cde0; background:white; border-radius:8px; padding:6px 12px; font-size:13.5px; font-weight:500; }
#d-drop .dz-btn:hover { border-color:#4f46e5; color:#4f46e5; }
#d-drop .dz-status { margin-top:10px; min-height:18px; font-size:13px; color:#3f4658; }
.d-slot { border-radius:10px; }
#d-top { align-items:center; border-bottom: 1px solid var(--border-color-primary); padding-bottom: 6px; }
#d-header { border-bottom: none !important; }
.d-health ul { list-style:none; margin:4px 0 0 0; padding:0; font-size:13px; }
.d-health li { margin: 5px 0; }
.d-dot { display:inline-block; width:10px; height:10px; border-radius:50%; margin-right:6px; vertical-align:middle; }
.d-dot.d-ok { background:#3a9a5b; } .d-dot.d-meh { background:#e08a2c; } .d-dot.d-bad { background:#c8453c; }
.d-notes .d-warn { margin: 0 0 8px 0; }
#d-report-table *, #d-samples *, #d-runs * { font-family: var(--font) !important; }
#d-report-table td, #d-samples td, #d-runs td { font-size: 13px; }
#d-stop-btn { margin-top: 2px; }
footer { display:none !important; }
"""


DROPZONE_TEMPLATE = """
<div class="dz" data-state="idle">
  <div class="dz-icon">⤓</div>
  <div class="dz-title">Drop a folder of sounds here</div>
  <div class="dz-sub">or several audio files, or a .zip — subfolders are kept · WAV, FLAC, OGG, MP3, AIFF…</div>
  <div class="dz-buttons">
    <label class="dz-btn">Choose a folder…<input type="file" class="dz-folder" webkitdirectory directory multiple hidden></label>
    <label class="dz-btn">Choose files or a .zip…<input type="file" class="dz-files" multiple hidden></label>
  </div>
  <div class="dz-status"></div>
</div>
"""
