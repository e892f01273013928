/**
 * Counts a backend's readers in this process, so that removing what they may still open
 * (superseded snapshot blobs and objects) waits until the last of them has finished.
 */
export class ReaderCount {
  #active = 0;
  #deferred: (() => void) | null = null;

  /** Counts a reader until the returned function is called (once; later calls do nothing). */
  enter(): () => void {
    this.#active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.#active > 0 || !this.#deferred) return;
      const later = this.#deferred;
      this.#deferred = null;
      later();
    };
  }

  /**
   * Whether a reader is active. If one is, `later` runs when the last one leaves (the latest
   * `later` given, once); the caller skips its cleanup until then.
   */
  deferring(later: () => void): boolean {
    if (this.#active === 0) return false;
    this.#deferred = later;
    return true;
  }
}
