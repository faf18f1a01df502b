import { Duplex } from 'node:stream'
import type { Socket } from 'node:net'

export class FrameTooLargeError extends Error {
  constructor (readonly declaredBytes: number, readonly limitBytes: number) {
    super(`MQTT packet of ${declaredBytes} bytes exceeds the ${limitBytes}-byte limit`)
    this.name = 'FrameTooLargeError'
  }
}

export class MalformedLengthError extends Error {
  constructor () {
    super('malformed MQTT remaining length')
    this.name = 'MalformedLengthError'
  }
}

/**
 * Tracks MQTT frame boundaries in a byte stream without buffering it, and throws as soon as a
 * fixed header declares a packet larger than the limit (MQTT 3.1.1 §2.2.3: remaining length is a
 * 1–4 byte varint). Aedes has no packet size cap of its own and buffers whatever is declared.
 */
export class FrameSizeChecker {
  private state: 'header' | 'length' | 'body' = 'header'
  private remaining = 0
  private multiplier = 1
  private lengthBytes = 0

  constructor (private readonly limitBytes: number) {}

  check (chunk: Buffer): void {
    let i = 0
    while (i < chunk.length) {
      if (this.state === 'header') {
        i++
        this.state = 'length'
        this.remaining = 0
        this.multiplier = 1
        this.lengthBytes = 0
      } else if (this.state === 'length') {
        const byte = chunk[i++]!
        this.remaining += (byte & 0x7f) * this.multiplier
        this.multiplier *= 128
        this.lengthBytes++
        if ((byte & 0x80) !== 0) {
          if (this.lengthBytes === 4) throw new MalformedLengthError()
          continue
        }
        const total = 1 + this.lengthBytes + this.remaining
        if (total > this.limitBytes) throw new FrameTooLargeError(total, this.limitBytes)
        this.state = this.remaining === 0 ? 'header' : 'body'
      } else {
        const take = Math.min(this.remaining, chunk.length - i)
        i += take
        this.remaining -= take
        if (this.remaining === 0) this.state = 'header'
      }
    }
  }
}

/**
 * Wraps a socket so that Aedes only ever sees bytes of frames within the limit; a frame declared
 * too large destroys the socket before its body is read, let alone buffered.
 */
export function limitFrames (socket: Socket, limitBytes: number, onViolation: (err: Error) => void): Duplex {
  const checker = new FrameSizeChecker(limitBytes)
  const stream = new Duplex({
    read () { socket.resume() },
    write (chunk, _encoding, callback) { socket.write(chunk, callback) },
    final (callback) { socket.end(callback) },
    destroy (err, callback) {
      socket.destroy()
      callback(err)
    }
  })
  socket.on('data', (chunk: Buffer) => {
    try {
      checker.check(chunk)
    } catch (err) {
      onViolation(err as Error)
      socket.destroy()
      stream.destroy()
      return
    }
    if (!stream.push(chunk)) socket.pause()
  })
  socket.on('end', () => stream.push(null))
  socket.on('close', () => stream.destroy())
  socket.on('error', (err) => stream.destroy(err))
  // Aedes reads the peer address from the stream for logs and $SYS.
  Object.assign(stream, { remoteAddress: socket.remoteAddress, remotePort: socket.remotePort })
  return stream
}
