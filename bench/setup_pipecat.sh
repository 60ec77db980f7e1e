#!/usr/bin/env bash
# Creates bench/.venv-pipecat: Pipecat with the extras the comparison bot needs, in its own
# virtualenv so its dependencies never touch callroom's .venv. Idempotent (stamp file).
#
#   bash bench/setup_pipecat.sh            # or: make bench (runs it first)
#
# Extras: websocket (FastAPI/WebSocket server transport; the bot uses the plain `websockets`
# server transport, the extra is what Pipecat documents for it), whisper (faster-whisper),
# piper (piper-tts), openai (OpenAI-compatible LLM service). Silero VAD and Smart Turn v3 run
# on onnxruntime, a core dependency. Nothing downloads models: pipecat_bot.py passes local
# paths (the same files callroom uses).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=bench/.venv-pipecat
PIPECAT_VERSION="${PIPECAT_VERSION:-1.14.0}"
SPEC="pipecat-ai[websocket,whisper,piper,openai]==${PIPECAT_VERSION}"
STAMP="$VENV/.installed-${PIPECAT_VERSION}-$(cksum < "$0" | cut -d" " -f1)"
if [ -f "$STAMP" ]; then
  exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# The same versions of the model runtimes as callroom's .venv, so both run the same kernels.
pins=()
for pkg in faster-whisper ctranslate2 onnxruntime piper-tts numpy uvicorn websockets; do
  v=$(.venv/bin/python -c "from importlib.metadata import version; print(version('$pkg'))" 2>/dev/null || true)
  if [ -n "$v" ]; then pins+=("$pkg==$v"); fi
done
# uvicorn serves the FastAPI app (Pipecat's multi-session WebSocket transport); the model
# files themselves (Whisper tiny.en, Piper voice, Smart Turn) are read from callroom's .venv.
"$VENV/bin/pip" install -q "$SPEC" "${pins[@]}"
"$VENV/bin/pip" freeze > "$VENV/freeze.txt"
"$VENV/bin/python" -c "import pipecat, faster_whisper, piper; print('pipecat', pipecat.__version__)"
touch "$STAMP"
