"""Click -> mask latency as the browser sees it, on `medsam-adapter serve` (headless chromium, Playwright).

For each click the page records the time of the pointer press and of the first view frame (RCA image) whose
pixels around the click turn the segment's colour; the difference is the latency a user sees: event to server,
MedSAM decode (+ encode if the slice was not embedded yet), labelmap write, render, JPEG encode, transfer,
decode in the page. The volume's axial slices are embedded before measuring (as `serve` does in the
background), so this is the interactive case. Undo between clicks keeps every click a fresh first click.

    python benchmarks/browser_latency.py [--clicks 20] [--out benchmarks/results] [--screenshot docs/web_viewer.png]

Also writes a screenshot of a real segmentation made in the browser: a box on the lesion in the axial view, then
Propagate, with the base LiteMedSAM (`serve --adapter none`): with the shipped click adapter attached,
propagation from that box does not stop at the lesion on this sample (it runs through all 25 slices).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from Testing.browser import (LESION_BOX_IJK, LESION_CLICK_IJK, SAMPLE, browser_unavailable,  # noqa: E402
                             chromium_page, ijk_to_ras, open_viewer, page_point, total_voxels, viewer, wait_until)

# Arms a one-shot measurement: baseline count of segment-coloured pixels around (x, y) in a view, then on each
# new frame of that view, the time since the last pointerdown once the count has changed.
ARM_JS = """
async ([name, px, py, half]) => {
  const img = document.querySelector('.medsam-view-' + name).parentElement.querySelector('img');
  const coloured = async () => {
    await img.decode().catch(() => {});
    const box = img.getBoundingClientRect();
    const sx = img.naturalWidth / box.width, sy = img.naturalHeight / box.height;
    const x0 = Math.max(0, Math.round((px - box.left - half) * sx)), y0 = Math.max(0, Math.round((py - box.top - half) * sy));
    const w = Math.round(2 * half * sx), h = Math.round(2 * half * sy);
    const canvas = new OffscreenCanvas(img.naturalWidth, img.naturalHeight);
    const g = canvas.getContext('2d'); g.drawImage(img, 0, 0);
    const d = g.getImageData(x0, y0, w, h).data; let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] - d[i + 1] > 45 && d[i] - d[i + 2] > 45) n++;
    return n;
  };
  const baseline = await coloured();
  window.__medsam = {latency: null, baseline, t0: null};
  document.addEventListener('pointerdown', () => { window.__medsam.t0 = performance.now(); }, {capture: true, once: true});
  const onLoad = async () => {
    const t = performance.now();
    const n = await coloured();
    if (window.__medsam.t0 !== null && Math.abs(n - baseline) >= 10) {
      window.__medsam.latency = t - window.__medsam.t0; window.__medsam.count = n;
      img.removeEventListener('load', onLoad);
    }
  };
  img.addEventListener('load', onLoad);
  return baseline;
}
"""

CLICK_OFFSETS_IJK = [(0, 0), (-5, 12), (-3, -6), (4, 4)]  # around the lesion, cycled


def measure(server, page, clicks: int) -> dict:
    browser_ms, server_ms = [], []
    for n in range(clicks):
        di, dj = CLICK_OFFSETS_IJK[n % len(CLICK_OFFSETS_IJK)]
        i, j, k = LESION_CLICK_IJK
        x, y = page_point(page, server, "Red", ijk_to_ras((i + di, j + dj, k)))
        page.evaluate(ARM_JS, ["Red", x, y, 40])
        page.mouse.click(x, y)
        latency = wait_until(lambda: page.evaluate("window.__medsam.latency"), 30, 0.02, "the mask in the view")
        status = server.status()
        browser_ms.append(float(latency))
        server_ms.append(1000 * float(status["last"]["seconds"]))
        page.click("#medsam-undo")
        wait_until(lambda: total_voxels(server.status()) == 0, 30, what="undo")
        time.sleep(0.4)  # let the undone frame arrive before arming the next measurement
    return {"browser_click_to_mask_ms": _summary(browser_ms), "server_prompt_ms": _summary(server_ms),
            "samples_browser_ms": [round(v, 1) for v in browser_ms]}


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": round(statistics.median(values), 1), "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
            "min": round(ordered[0], 1), "max": round(ordered[-1], 1), "n": len(values)}


def screenshot(server, page, path: Path) -> None:
    """A real segmentation: box on the lesion in the axial view, then propagate, then a picture of the page."""
    page.click("#medsam-add")
    (i0, j0, _), (i1, j1, _) = LESION_BOX_IJK
    k = LESION_CLICK_IJK[2]
    a = page_point(page, server, "Red", ijk_to_ras((i0, j0, k)))
    b = page_point(page, server, "Red", ijk_to_ras((i1, j1, k)))
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    page.mouse.move(*b)
    page.mouse.up()
    wait_until(lambda: total_voxels(server.status()) > 0, 60, what="the box result")
    page.click("#medsam-propagate")
    wait_until(lambda: "propagate" in server.status()["last"]["message"], 120, what="propagation")
    page.locator("input[type=checkbox]").first.check()  # "Show segments in 3D"
    time.sleep(4.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--screenshot", type=Path, default=REPO / "docs" / "web_viewer.png")
    args = parser.parse_args()
    reason = browser_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, viewer([SAMPLE], Path(tmp)) as server, \
            chromium_page() as page:
        open_viewer(page, server)
        wait_until(lambda: (e := server.status()["embedding"])["total"] and e["done"] == e["total"], 300, 0.5,
                   "the axial slices to be embedded")
        results = measure(server, page, args.clicks)
    if args.screenshot:
        with tempfile.TemporaryDirectory() as tmp, viewer([SAMPLE], Path(tmp), extra=["--adapter", "none"]) as \
                server, chromium_page() as page:
            open_viewer(page, server)
            screenshot(server, page, args.screenshot)
    results.update({"volume": SAMPLE.name, "view": "axial (Red)", "machine": platform.processor() or platform.machine(),
                    "model": "litemedsam + shipped click adapter", "browser": "headless chromium (software GL)"})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "browser_latency_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "browser_latency_cpu.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def to_markdown(results: dict) -> str:
    browser, server = results["browser_click_to_mask_ms"], results["server_prompt_ms"]
    return "\n".join([
        "# Browser click -> mask latency", "",
        f"`medsam-adapter serve` on `{results['volume']}`, {results['model']}, {results['browser']}, "
        f"{browser['n']} clicks in the {results['view']} view (slices embedded beforehand).", "",
        "| measure | median | p90 | min | max |", "|---|---|---|---|---|",
        f"| click -> mask visible in the page | {browser['median']} ms | {browser['p90']} ms | {browser['min']} ms | "
        f"{browser['max']} ms |",
        f"| of which server prompt -> labelmap | {server['median']} ms | {server['p90']} ms | {server['min']} ms | "
        f"{server['max']} ms |", ""])


if __name__ == "__main__":
    sys.exit(main())
