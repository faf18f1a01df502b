import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs'
import { Transform, type Readable, type TransformCallback } from 'node:stream'

// NDJSON files at rest, encrypted in chunks with AES-256-GCM (NIST SP 800-38D) under the
// export's own data key, so a file is streamed in and out without ever being whole in memory.
//
// A file is a sequence of frames:  flag (u8: 1 = last frame) | length (u32 BE, of the
// ciphertext) | IV (12 bytes, random) | ciphertext | tag (16 bytes).  The additional data binds
// each frame to its export, file name, position and flag, so frames cannot be reordered, moved
// between files or exports, or dropped from the end (the reader requires the last frame).

const IV_BYTES = 12
const TAG_BYTES = 16
const HEADER_BYTES = 1 + 4
/** Plaintext per frame: big enough that the framing costs nothing, small enough to hold. */
export const FRAME_PLAINTEXT_BYTES = 64 * 1024
const MAX_FRAME_CIPHERTEXT = FRAME_PLAINTEXT_BYTES * 4

export interface FileBinding { exportId: string, fileName: string }

function additionalData (at: FileBinding, index: number, last: boolean): Buffer {
  return Buffer.from(`vigil-bulk-export/v1\u0000${at.exportId}\u0000${at.fileName}\u0000${index}\u0000${last ? 1 : 0}`, 'utf8')
}

function sealFrame (key: Buffer, at: FileBinding, index: number, last: boolean, plaintext: Buffer): Buffer {
  const iv = randomBytes(IV_BYTES)
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES })
  cipher.setAAD(additionalData(at, index, last))
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()])
  const header = Buffer.alloc(HEADER_BYTES)
  header[0] = last ? 1 : 0
  header.writeUInt32BE(body.length, 1)
  return Buffer.concat([header, iv, body, cipher.getAuthTag()])
}

/** NDJSON lines into one encrypted file, with backpressure; counts lines and plaintext bytes. */
export class EncryptedNdjsonWriter {
  private readonly stream: WriteStream
  private pending: Buffer[] = []
  private pendingBytes = 0
  private index = 0
  records = 0
  bytes = 0

  constructor (path: string, private readonly key: Buffer, private readonly at: FileBinding) {
    this.stream = createWriteStream(path, { flags: 'wx', mode: 0o600 })
  }

  async line (value: unknown): Promise<void> {
    const text = Buffer.from(JSON.stringify(value) + '\n', 'utf8')
    this.pending.push(text)
    this.pendingBytes += text.length
    this.records++
    this.bytes += text.length
    if (this.pendingBytes >= FRAME_PLAINTEXT_BYTES) await this.writeFrame(false)
  }

  private async writeFrame (last: boolean): Promise<void> {
    const frame = sealFrame(this.key, this.at, this.index++, last, Buffer.concat(this.pending, this.pendingBytes))
    this.pending = []
    this.pendingBytes = 0
    if (!this.stream.write(frame)) await new Promise<void>((resolve) => this.stream.once('drain', resolve))
  }

  /** Writes the last frame (possibly empty) and closes the file. */
  async close (): Promise<void> {
    await this.writeFrame(true)
    await new Promise<void>((resolve, reject) => this.stream.end((err?: Error | null) => { if (err != null) reject(err); else resolve() }))
  }

  destroy (): void { this.stream.destroy() }
}

/** Thrown when a file does not decrypt: tampered, truncated, or not this export's. */
export class FrameError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'FrameError'
  }
}

/** Decrypts frames as they stream through; errors if a frame fails or the last frame is missing. */
export function decryptingTransform (key: Buffer, at: FileBinding): Transform {
  let buffered: Buffer = Buffer.alloc(0)
  let index = 0
  let sawLast = false
  return new Transform({
    transform (chunk: Buffer, _encoding, callback: TransformCallback) {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk])
      try {
        for (;;) {
          if (buffered.length < HEADER_BYTES) break
          const flag = buffered[0]!
          const length = buffered.readUInt32BE(1)
          if (flag > 1 || length > MAX_FRAME_CIPHERTEXT || sawLast) throw new FrameError('malformed frame')
          const total = HEADER_BYTES + IV_BYTES + length + TAG_BYTES
          if (buffered.length < total) break
          const iv = buffered.subarray(HEADER_BYTES, HEADER_BYTES + IV_BYTES)
          const body = buffered.subarray(HEADER_BYTES + IV_BYTES, HEADER_BYTES + IV_BYTES + length)
          const tag = buffered.subarray(HEADER_BYTES + IV_BYTES + length, total)
          const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES })
          decipher.setAAD(additionalData(at, index++, flag === 1))
          decipher.setAuthTag(tag)
          let plaintext: Buffer
          try {
            plaintext = Buffer.concat([decipher.update(body), decipher.final()])
          } catch {
            throw new FrameError('frame failed authentication')
          }
          if (flag === 1) sawLast = true
          buffered = buffered.subarray(total)
          if (plaintext.length > 0) this.push(plaintext)
        }
        callback()
      } catch (err) {
        callback(err as Error)
      }
    },
    flush (callback: TransformCallback) {
      callback(buffered.length > 0 || !sawLast ? new FrameError('file is truncated') : null)
    }
  })
}

/** The plaintext NDJSON of an encrypted file, as a stream. */
export function openDecrypted (path: string, key: Buffer, at: FileBinding): Readable {
  const source = createReadStream(path, { highWaterMark: FRAME_PLAINTEXT_BYTES })
  const out = decryptingTransform(key, at)
  source.on('error', (err) => out.destroy(err))
  return source.pipe(out)
}
