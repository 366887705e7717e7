#!/usr/bin/env bash
# Type-checks the browser client of docs/frontend.md (the block the browser test serves)
# with TypeScript in strict mode: the docs promise it is TypeScript-friendly.
#   tests/tools/client_types.sh        (needs node and npm; installs typescript in a scratch dir)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 - "$ROOT/docs/frontend.md" "$WORK/client.js" <<'PY'
import sys
doc = open(sys.argv[1]).read()
marker = "<!-- client.js: the test serves the block below as it is -->\n```js\n"
start = doc.index(marker) + len(marker)
end = doc.index("\n```", start)
open(sys.argv[2], "w").write(doc[start:end + 1])
PY
cat > "$WORK/tsconfig.json" <<'JSON'
{"compilerOptions": {"allowJs": true, "checkJs": true, "noEmit": true, "strict": true,
  "target": "ES2022", "module": "ES2022", "lib": ["ES2022", "DOM"]},
 "files": ["client.js"]}
JSON
cd "$WORK"
npm install --silent --no-audit --no-fund typescript@5 >/dev/null
npx --no-install tsc -p .
echo "docs/frontend.md client: tsc --strict ok"
