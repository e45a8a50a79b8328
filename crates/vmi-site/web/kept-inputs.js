// Inputs kept until the site says they are durable (InputDurable; InputAck from a version-1
// site), so that a new connection resends exactly those the phone, wherever it runs now,
// has not applied, in order, under their first sequence numbers. Pure.

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

  /** Every input up to `seq` is done with (durable; applied, from a version-1 site): forget it. */
  acked(seq) {
    this.list = this.list.filter((k) => k.seq > seq);
  }

  /**
   * A Welcome said the phone applied up to `lastInputSeq`: returns the inputs to resend. Those
   * applied are forgotten, unless `keepApplied` (a version-2 site: kept until durable, since a
   * failover may bring back a phone without them).
   */
  welcomed(lastInputSeq, keepApplied = false) {
    if (!keepApplied) this.acked(lastInputSeq);
    if (this.list.length === 0) this.nextSeq = Math.max(this.nextSeq, lastInputSeq + 1);
    return this.list.filter((k) => k.seq > lastInputSeq);
  }
}
