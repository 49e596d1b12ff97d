// Folder drop zone for Distill (runs as the `js_on_load` of a gr.HTML component).
//
// Gradio's own drop zone reads only dataTransfer.files, which holds no folder contents and no
// relative paths. Here a drop is walked entry by entry (webkitGetAsEntry, or the File System
// Access handles where that is all there is), the folder picker's files carry webkitRelativePath,
// and every file is uploaded through Gradio's `upload()` helper. The server then receives one JSON
// list of {path, rel} pairs, in the same order, and copies the files into the workspace with their
// subfolders. Available here: element, props, trigger, upload, watch.
(function () {
  const zone = element.querySelector(".dz");
  const statusEl = element.querySelector(".dz-status");
  const folderInput = element.querySelector(".dz-folder");
  const filesInput = element.querySelector(".dz-files");
  const maxFiles = Number(props.max_files || 2000);
  const maxBytes = Number(props.max_file_bytes || 0);
  let busy = false;

  const setStatus = (text, state) => {
    statusEl.textContent = text;
    zone.dataset.state = state || "idle";
  };

  const isHidden = (name) => name.startsWith(".") || name === "__MACOSX";

  // readEntries() hands out at most ~100 entries per call: keep calling until it returns none.
  const readAllEntries = (reader) =>
    new Promise((resolve, reject) => {
      const all = [];
      const next = () =>
        reader.readEntries((batch) => {
          if (!batch.length) return resolve(all);
          all.push(...batch);
          next();
        }, reject);
      next();
    });

  const entryFile = (entry) => new Promise((resolve, reject) => entry.file(resolve, reject));

  async function walkEntry(entry, prefix, out) {
    if (!entry || isHidden(entry.name)) return;
    const rel = prefix ? prefix + "/" + entry.name : entry.name;
    if (entry.isFile) {
      out.push({ file: await entryFile(entry), rel });
    } else if (entry.isDirectory) {
      const children = await readAllEntries(entry.createReader());
      children.sort((a, b) => a.name.localeCompare(b.name));
      for (const child of children) {
        await walkEntry(child, rel, out);
        if (out.length > maxFiles) return;
      }
    }
  }

  async function walkHandle(handle, prefix, out) {
    if (!handle || isHidden(handle.name)) return;
    const rel = prefix ? prefix + "/" + handle.name : handle.name;
    if (handle.kind === "file") {
      out.push({ file: await handle.getFile(), rel });
    } else if (handle.kind === "directory") {
      for await (const child of handle.values()) {
        await walkHandle(child, rel, out);
        if (out.length > maxFiles) return;
      }
    }
  }

  // Must run synchronously inside the drop handler: DataTransfer items die when it returns.
  function grabDropped(dt) {
    const items = dt && dt.items ? Array.from(dt.items).filter((it) => it.kind === "file") : [];
    const entries = items.map((it) => (it.webkitGetAsEntry ? it.webkitGetAsEntry() : null));
    if (entries.length && entries.every(Boolean)) return { entries };
    const handles = items.map((it) => (it.getAsFileSystemHandle ? it.getAsFileSystemHandle() : null));
    if (handles.length && handles.every(Boolean)) return { handles };
    return { files: Array.from((dt && dt.files) || []) };
  }

  async function collect(grabbed) {
    const out = [];
    if (grabbed.entries) {
      for (const e of grabbed.entries) await walkEntry(e, "", out);
    } else if (grabbed.handles) {
      for (const h of await Promise.all(grabbed.handles)) await walkHandle(h, "", out);
    } else {
      for (const f of grabbed.files) if (!isHidden(f.name)) out.push({ file: f, rel: f.webkitRelativePath || f.name });
    }
    return out;
  }

  const human = (n) => (n > 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(n / 1024)) + " KB");

  async function send(list) {
    if (!list.length) return setStatus("Nothing to upload: the drop held no files.", "error");
    if (list.length > maxFiles)
      return setStatus(`Too many files (more than ${maxFiles}). Distill is made for 5–500 sounds: choose a smaller folder.`, "error");
    if (maxBytes) {
      const big = list.find((x) => x.file.size > maxBytes);
      if (big) return setStatus(`'${big.rel}' is ${human(big.file.size)}; the limit per file is ${human(maxBytes)}.`, "error");
    }
    busy = true;
    const results = new Array(list.length);
    let done = 0;
    let failed = null;
    setStatus(`Uploading 0 / ${list.length} files…`, "busy");
    const lanes = Math.min(4, list.length);
    let nextIndex = 0;
    async function lane() {
      while (nextIndex < list.length && !failed) {
        const i = nextIndex++;
        try {
          const res = await upload(list[i].file);
          results[i] = { path: res.path, rel: list[i].rel, size: list[i].file.size };
        } catch (err) {
          failed = `Upload of '${list[i].rel}' failed: ${err && err.message ? err.message : err}`;
        }
        done += 1;
        setStatus(`Uploading ${done} / ${list.length} files…`, "busy");
      }
    }
    await Promise.all(Array.from({ length: lanes }, lane));
    busy = false;
    if (failed) return setStatus(failed, "error");
    setStatus(`Uploaded ${list.length} file${list.length === 1 ? "" : "s"}. Scanning…`, "done");
    props.value = JSON.stringify({ nonce: Date.now() + Math.random(), files: results });
    await new Promise((r) => setTimeout(r, 0));
    trigger("files_ready");
  }

  async function handle(grabbed) {
    if (busy) return setStatus("Still uploading the previous drop; wait for it to finish.", "busy");
    setStatus("Reading the folder…", "busy");
    try {
      await send(await collect(grabbed));
    } catch (err) {
      busy = false;
      setStatus(`Could not read what was dropped: ${err && err.message ? err.message : err}`, "error");
    }
  }

  zone.addEventListener("dragenter", (ev) => { ev.preventDefault(); zone.dataset.over = "1"; });
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); if (ev.dataTransfer) ev.dataTransfer.dropEffect = "copy"; zone.dataset.over = "1"; });
  zone.addEventListener("dragleave", (ev) => { if (!zone.contains(ev.relatedTarget)) delete zone.dataset.over; });
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    ev.stopPropagation();
    delete zone.dataset.over;
    handle(grabDropped(ev.dataTransfer));
  });
  folderInput.addEventListener("change", () => {
    const files = Array.from(folderInput.files || []);
    folderInput.value = "";
    handle({ files });
  });
  filesInput.addEventListener("change", () => {
    const files = Array.from(filesInput.files || []);
    filesInput.value = "";
    handle({ files });
  });
  // The server answers by setting this component's value to {"result", "ok"}.
  watch("value", () => {
    try {
      const v = JSON.parse(props.value || "{}");
      // An empty result clears the line: a new dataset came another way, so the last drop's verdict is stale.
      if (v && typeof v.result === "string") setStatus(v.result, v.result && (v.ok ? "done" : "error"));
    } catch (e) { /* the value is our own upload list until the server answers */ }
  });
  // Lets tests (and power users) feed a list of {file, rel} directly.
  element.distillSend = (list) => send(list);
})();
