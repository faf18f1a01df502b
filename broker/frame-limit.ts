import { Duplex } from 'node:stream'

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

export class UnexpectedPacketTypeError extends Error {
  constructor (readonly packetType: number) {
    super(`MQTT packet type ${packetType} is not one a client sends`)
    this.name = 'UnexpectedPacketTypeError'
  }
}

// MQTT 3.1.1 §2.2.1: what flows client to server. CONNACK (2), SUBACK (9), UNSUBACK (11) and
// PINGRESP (13) only flow the other way, 0 and 15 are reserved. Aedes drops a connection that
// sends one without reporting an error, so it is caught here, where it can be counted.
const CLIENT_PACKET_TYPES = new Set([1, 3, 4, 5, 6, 7, 8, 10, 12, 14])

/**
 * Tracks MQTT frame boundaries in a byte stream without buffering it, and throws as soon as a
 * fixed header declares a packet larger than the limit (MQTT 3.1.1 §2.2.3: remaining length is a
 * 1–4 byte varint) or a packet type no client sends (MQTT-4.8.0-1: a protocol violation closes
 * the connection). Aedes has no packet size cap of its own and buffers whatever is declared.
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
        const type = chunk[i++]! >> 4
        if (!CLIENT_PACKET_TYPES.has(type)) throw new UnexpectedPacketTypeError(type)
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

export class SlowSubscriberError extends Error {
  constructor (readonly queuedBytes: number, readonly limitBytes: number) {
    super(`${queuedBytes} bytes queued for a client that is not reading (limit ${limitBytes})`)
    this.name = 'SlowSubscriberError'
  }
}

export interface StreamLimits {
  /** Largest MQTT packet accepted from the peer, fixed header included. */
  maxPacketBytes: number
  /** Bytes the transport may hold unsent before the peer counts as not reading. */
  maxOutgoingBytes: number
}

/**
 * Wraps a transport (TCP or TLS socket, WebSocket stream) so that Aedes only ever sees bytes of
 * frames within the limit: a frame declared too large destroys the transport before its body is
 * read, let alone buffered.
 *
 * Writes never apply backpressure to Aedes. Aedes waits for `drain` before it completes a
 * delivery, and its message emitter runs at most 100 deliveries at once across all clients: a
 * subscriber that stops reading holds those slots until `drainTimeout` and freezes delivery (and
 * QoS 2 PUBREC) for every other client. Here a write completes at once, the transport buffers
 * it, and a peer with more than `maxOutgoingBytes` unsent is dropped instead.
 */
export function limitFrames (transport: Duplex, limits: StreamLimits, remoteAddress: string | undefined, onViolation: (err: Error) => void): Duplex {
  const checker = new FrameSizeChecker(limits.maxPacketBytes)
  let violated = false
  const violation = (err: Error): void => {
    if (violated) return
    violated = true
    onViolation(err)
    transport.destroy()
    stream.destroy()
  }
  const stream = new Duplex({
    read () { transport.resume() },
    write (chunk, _encoding, callback) {
      if (transport.destroyed) return callback(new Error('connection closed'))
      transport.write(chunk)
      if (transport.writableLength > limits.maxOutgoingBytes) violation(new SlowSubscriberError(transport.writableLength, limits.maxOutgoingBytes))
      callback()
    },
    // mqtt-packet corks this stream for each packet it writes and uncorks it on the next tick,
    // so a packet's pieces (a PUBACK is three writes: header, length, packet id), and every packet
    // written to this client in the same tick, arrive here together: one write to the socket (one
    // syscall) instead of one per piece. PUBACK writes were 20 % of Vigil's CPU at 8,500 msg/s.
    writev (chunks, callback) {
      if (transport.destroyed) return callback(new Error('connection closed'))
      transport.write(chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk as Buffer)))
      if (transport.writableLength > limits.maxOutgoingBytes) violation(new SlowSubscriberError(transport.writableLength, limits.maxOutgoingBytes))
      callback()
    },
    final (callback) { transport.end(callback) },
    destroy (err, callback) {
      transport.destroy()
      callback(err)
    }
  })
  transport.on('data', (chunk: Buffer) => {
    try {
      checker.check(chunk)
    } catch (err) {
      violation(err as Error)
      return
    }
    if (!stream.push(chunk)) transport.pause()
  })
  transport.on('end', () => stream.push(null))
  transport.on('close', () => stream.destroy())
  transport.on('error', (err) => stream.destroy(err))
  // Aedes reads the peer address from the stream for logs and $SYS.
  Object.assign(stream, { remoteAddress })
  return stream
}
