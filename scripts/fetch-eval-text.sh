#!/usr/bin/env bash
# Fetches the public evaluation text into data/eval/botchan.txt: "Botchan (Master Darling)" by
# Natsume Soseki, English translation by Yasotaro Morri (1918), Project Gutenberg eBook #8868,
# public domain. PyPI is the only registry reachable here, and sentencepiece's source
# distribution ships this book as its test corpus (test/botchan.txt), so the text comes from
# that sdist. wikitext-2 (llama.cpp's usual text) is on no package registry.
#
# The file is normalized (UTF-8 byte-order mark dropped, CRLF -> LF) and checked against a
# pinned sha256, as is the sdist. Idempotent and cached in ${LEDGE_CACHE:-~/.cache/ledge}.
# Prints the text's path on stdout.
#
# It also writes two disjoint parts of the book, so calibration never sees the evaluation text:
#   data/eval/botchan-calib.txt    lines 1-1300 (chapters I-III): calibration (imatrix, pruning)
#   data/eval/botchan-heldout.txt  lines 1301-end: held-out evaluation (KLD, perplexity)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=$ROOT/data/eval
OUT=$OUT_DIR/botchan.txt
CACHE=${LEDGE_CACHE:-$HOME/.cache/ledge}/sdist
PY=${PYTHON:-python3}

SDIST=sentencepiece-0.2.3.tar.gz
SDIST_SHA=21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd
# pip cannot download this sdist without building it, so it is fetched from PyPI's file
# host (the address PyPI's JSON API gives for it).
SDIST_URL=https://files.pythonhosted.org/packages/54/83/0664683546ffca8e36653d39d6217c361d931953f40ce28210b56927a9b6/$SDIST
MEMBER=sentencepiece-0.2.3/test/botchan.txt
TEXT_SHA=2680fa93dfc313ac6270fbf44128f4ba4c4f409ab5498f612b0e106965fdea99

sha() { sha256sum "$1" | cut -d' ' -f1; }

split_text() {
  [ -f "$OUT_DIR/botchan-calib.txt" ] || { head -n 1300 "$OUT" > "$OUT_DIR/botchan-calib.txt.tmp" && mv "$OUT_DIR/botchan-calib.txt.tmp" "$OUT_DIR/botchan-calib.txt"; }
  [ -f "$OUT_DIR/botchan-heldout.txt" ] || { tail -n +1301 "$OUT" > "$OUT_DIR/botchan-heldout.txt.tmp" && mv "$OUT_DIR/botchan-heldout.txt.tmp" "$OUT_DIR/botchan-heldout.txt"; }
}

if [ -f "$OUT" ] && [ "$(sha "$OUT")" = "$TEXT_SHA" ]; then
  split_text
  echo "$OUT"
  exit 0
fi

mkdir -p "$OUT_DIR" "$CACHE"
if ! [ -f "$CACHE/$SDIST" ] || [ "$(sha "$CACHE/$SDIST")" != "$SDIST_SHA" ]; then
  echo "downloading $SDIST from PyPI" >&2
  curl -fsSL --retry 3 -o "$CACHE/$SDIST.tmp" "$SDIST_URL"
  got=$(sha "$CACHE/$SDIST.tmp")
  if [ "$got" != "$SDIST_SHA" ]; then
    echo "error: $SDIST has sha256 $got, expected $SDIST_SHA" >&2
    rm -f "$CACHE/$SDIST.tmp"
    exit 1
  fi
  mv "$CACHE/$SDIST.tmp" "$CACHE/$SDIST"
fi

"$PY" - "$CACHE/$SDIST" "$MEMBER" "$OUT.tmp" <<'PYEOF'
import sys, tarfile
sdist, member, out = sys.argv[1:]
with tarfile.open(sdist) as t:
    raw = t.extractfile(member).read()
text = raw.decode("utf-8").lstrip("\ufeff").replace("\r\n", "\n")
with open(out, "w", encoding="utf-8", newline="\n") as f:
    f.write(text)
PYEOF
got=$(sha "$OUT.tmp")
if [ "$got" != "$TEXT_SHA" ]; then
  echo "error: the extracted text has sha256 $got, expected $TEXT_SHA" >&2
  rm -f "$OUT.tmp"
  exit 1
fi
mv "$OUT.tmp" "$OUT"
split_text
echo "$OUT"
