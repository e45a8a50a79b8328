// Inputs kept until the site acknowledges them, so that a new connection resends exactly
// those the site has not applied, in order, under their first sequence numbers. Pure.

/** Inputs kept at most (the oldest go first). */
export const MAX_KEPT_INPUTS = 4000;

export class KeptInputs {
  /** Starts from a saved session's `{kept, nextSeq}`, or empty. */
  constructor(saved) {
    this.list = saved && Array.isArray(saved.kept) ? saved.kept : []; // [{seq, input}]
    this.nextSeq = (saved && saved.nextSeq) || 1;
  }

  get length() {
    return this.list.length;
  }

  /** Keeps `input` under the next sequence number and returns that number. */
  add(input) {
    const seq = this.nextSeq++;
    this.list.push({ seq, input });
    if (this.list.length > MAX_KEPT_INPUTS) this.list.splice(0, this.list.length - MAX_KEPT_INPUTS);
    return seq;
  }

  /** The site applied every input up to `seq`. */
  acked(seq) {
    this.list = this.list.filter((k) => k.seq > seq);
  }

  /** A Welcome said the site applied up to `lastInputSeq`: returns the inputs to resend. */
  welcomed(lastInputSeq) {
    this.acked(lastInputSeq);
    if (this.list.length === 0) this.nextSeq = lastInputSeq + 1;
    return this.list;
  }
}
