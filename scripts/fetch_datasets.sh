#!/usr/bin/env bash
# Fetch a public audio collection from Debian's package archive and print the folder that holds it.
#   scripts/fetch_datasets.sh NAME        (NAME: see the table below, or `list`)
# Files land in ${DISTILL_DATASETS:-$HOME/.cache/distill-datasets}/NAME/ and are reused on later calls.
# Needs apt-get (Debian/Ubuntu) and dpkg-deb; runs `apt-get update` once if the package is unknown.
# The real-audio tests and the benchmarks use these collections; the app itself never needs them.
set -euo pipefail
declare -A PKG=(
  [freedesktop]=sound-theme-freedesktop       # 27 desktop UI sounds, .oga (Ogg Vorbis), 8-96 kHz, mono+stereo -> tier 2 (21-100 files)
  [asterisk-en]=asterisk-core-sounds-en-wav    # 568 spoken prompts, .wav 8 kHz mono, 25 min in all       -> tier 3 (>100), past 500 files
  [drascula]=drascula-music                   # 31 game-music tracks, .ogg (Ogg Vorbis), stereo, long files   -> tier 2 (21-100 files): music
)
name=${1:-}
if [[ -z $name || $name == list ]]; then
  for k in "${!PKG[@]}"; do echo "$k  (${PKG[$k]})"; done; exit 0
fi
pkg=${PKG[$name]:-}
[[ -n $pkg ]] || { echo "unknown dataset '$name'; try: $0 list" >&2; exit 2; }
root=${DISTILL_DATASETS:-$HOME/.cache/distill-datasets}
dest=$root/$name
if [[ -f $dest/.complete ]]; then echo "$dest"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download "$pkg" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1; apt-get download "$pkg" >/dev/null; }
dpkg-deb -x ./*.deb x
rm -rf "$dest"; mkdir -p "$dest"
# keep only the audio, flattened relative to the package's share folder; follow no links
find x -type f \( -iname '*.wav' -o -iname '*.oga' -o -iname '*.ogg' -o -iname '*.flac' -o -iname '*.mp3' \) -print0 |
  while IFS= read -r -d '' f; do rel=${f#x/usr/share/}; mkdir -p "$dest/$(dirname "$rel")"; cp "$f" "$dest/$rel"; done
cp x/usr/share/doc/"$pkg"/copyright "$dest/COPYRIGHT" 2>/dev/null || true
touch "$dest/.complete"
echo "$dest"
