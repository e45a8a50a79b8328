// The error every decoder of the browser terminal throws on a message that does not
// follow docs/PROTOCOL.md (codec, LZ4 blocks, screen updates).

/** A message that does not follow PROTOCOL.md. `kind` is the reference decoder's error name. */
export class ProtocolError extends Error {
  constructor(kind, detail) {
    super(detail ? `${kind}: ${detail}` : kind);
    this.name = 'ProtocolError';
    this.kind = kind;
  }
}
