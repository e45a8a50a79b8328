// Figures as people read them: sizes, durations, ages. Pure: no DOM.

/** Bytes: "840 B", "5.4 KiB", "1.2 MiB", "1.20 GiB". */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

/** Microseconds as people read them: "840 µs", "5.4 ms", "1.20 s". */
export function formatMicros(us) {
  if (!Number.isFinite(us)) return '–';
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 10000 ? 1 : 0)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

/** How long ago `atMs` was at `nowMs`: "just now", "12 s ago", "3 min ago", or the time of day. */
export function formatAgo(atMs, nowMs) {
  const s = Math.max(0, Math.round((nowMs - atMs) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return new Date(atMs).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
}
