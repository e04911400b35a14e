/**
 * A request the back-end refuses (a bad ring index, an address outside the memory table, a
 * feature not negotiated...): answered with a failure where the front-end asked for a reply,
 * never thrown out of the back-end.
 */
export class RequestFailure extends Error {
  override readonly name: string = 'RequestFailure';
}
