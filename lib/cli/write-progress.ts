// Progress of a file being written (make-model, convert): "\r 42% 5.67/13.48 GB 250 MB/s" on stderr.
const GB = 1e9;

/** A progress callback that redraws one line at most ~4 times a second (and at the end). */
export function writeProgressPrinter(err: NodeJS.WritableStream): (done: number, total: number) => void {
  const t0 = performance.now();
  let last = 0;
  return (done, total) => {
    const now = performance.now();
    if (now - last < 250 && done < total) return;
    last = now;
    const rate = done / 1e6 / Math.max((now - t0) / 1000, 1e-3);
    err.write(`\r  ${Math.floor((100 * done) / total).toString().padStart(3)}% ${(done / GB).toFixed(2)}/${(total / GB).toFixed(2)} GB ${rate.toFixed(0)} MB/s `);
  };
}
