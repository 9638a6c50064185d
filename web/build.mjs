// Bundles the web app's pages (web/src) with CodeMirror and Chart.js into src/sterling/web/static/dist,
// which `sterling serve` serves under /static/dist. Run from the repository root: `node web/build.mjs`.
// Everything comes from node_modules: the pages load nothing from the internet.
import { build } from "esbuild";
import { rmSync } from "node:fs";
import { dirname, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const outdir = resolve(root, "src/sterling/web/static/dist");

rmSync(outdir, { recursive: true, force: true });
const result = await build({
  entryPoints: { app: resolve(root, "web/src/main.js") },
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  outdir,
  logLevel: "warning",
  metafile: true,
});
const sizes = Object.entries(result.metafile.outputs)
  .filter(([name]) => !name.endsWith(".map"))
  .map(([name, out]) => `${relative(root, resolve(name))} ${(out.bytes / 1024).toFixed(0)} KiB`);
console.log(`web: built ${sizes.join(", ")}`);
