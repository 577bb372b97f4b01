() => {
  // Pointer on the photo (#detections-image). A click becomes "x,y" and a drag "x0,y0,x1,y1",
  // as fractions of the picture as shown (object-fit: contain), handed to Python by clicking the
  // hidden #apply-point / #apply-box buttons, whose events read window.__visualSearchPoint /
  // __visualSearchBox (a value set on a hidden field from a script does not reach Gradio's
  // state). Why not gr.Image's select event: it reports clicks only, and with pixel coordinates
  // that are off when the picture is letterboxed. Run once per page by demo.load(js=...).
  if (window.__visualSearchDrag) return;
  window.__visualSearchDrag = true;
  let start = null, rect = null, swallow = false;
  const picture = (el) => el && el.closest && el.closest('#detections-image') &&
    el.tagName === 'IMG' ? el : null;
  const shown = (img) => {
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
    return {left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, w, h};
  };
  document.addEventListener('dragstart', (e) => {
    if (picture(e.target)) e.preventDefault();
  }, true);
  document.addEventListener('pointerdown', (e) => {
    const img = picture(e.target);
    if (!img || e.button !== 0) return;
    start = {x: e.clientX, y: e.clientY, img};
  }, true);
  document.addEventListener('pointermove', (e) => {
    if (!start) return;
    const dx = Math.abs(e.clientX - start.x), dy = Math.abs(e.clientY - start.y);
    if (!rect && dx + dy < 8) return;
    if (!rect) { rect = document.createElement('div'); rect.className = 'drag-box';
                 document.body.appendChild(rect); }
    rect.style.left = Math.min(e.clientX, start.x) + 'px';
    rect.style.top = Math.min(e.clientY, start.y) + 'px';
    rect.style.width = dx + 'px'; rect.style.height = dy + 'px';
  }, true);
  document.addEventListener('pointerup', (e) => {
    if (!start) return;
    const s = start; start = null;
    const p = shown(s.img);
    const fx = (x) => Math.min(Math.max((x - p.left) / p.w, 0), 1);
    const fy = (y) => Math.min(Math.max((y - p.top) / p.h, 0), 1);
    if (!rect) {  // a click: the object under it
      const point = [fx(e.clientX), fy(e.clientY)];
      window.__visualSearchPoint = point.map((v) => v.toFixed(4)).join(',');
      const pick = document.querySelector('#apply-point');
      if (pick) pick.click();
      return;
    }
    rect.remove(); rect = null; swallow = true;
    setTimeout(() => { swallow = false; }, 400);
    const box = [fx(s.x), fy(s.y), fx(e.clientX), fy(e.clientY)].map((v) => v.toFixed(4));
    window.__visualSearchBox = box.join(',');
    const apply = document.querySelector('#apply-box');
    if (apply) apply.click();
  }, true);
  document.addEventListener('click', (e) => {
    if (swallow && picture(e.target)) { e.stopPropagation(); e.preventDefault(); swallow = false; }
  }, true);
}
