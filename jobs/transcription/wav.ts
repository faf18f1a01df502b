/**
 * RIFF/WAVE header reading (Microsoft "Multimedia Programming Interface and Data
 * Specifications 1.0", 1991; WAVE_FORMAT_EXTENSIBLE from the Windows DDK's ksmedia.h).
 * Pure: a Buffer in, a description or a refusal out.
 */

export interface WavInfo {
  /** 1 PCM, 3 IEEE float (WAVE_FORMAT_EXTENSIBLE resolved to its sub-format). */
  format: 1 | 3
  channels: number
  sampleRate: number
  bitsPerSample: number
  /** Bytes of sample data (the data chunk, clipped to what the file holds). */
  dataBytes: number
  /** Where the sample data starts in the file. */
  dataOffset: number
  durationMs: number
  /**
   * Whether the engines can read it as is: 16 kHz, mono, 16-bit PCM in the canonical 44-byte
   * layout (pocketsphinx reads a fixed header: a LIST chunk before `fmt ` or an extensible
   * header makes it fail). Otherwise sox converts it.
   */
  isEngineNative: boolean
}

/** Why a body is refused: `not_wav` and `unsupported_encoding` are media-type problems (415), `invalid` a broken file (400). */
export type WavProblem = 'not_wav' | 'unsupported_encoding' | 'invalid'

export class WavError extends Error {
  constructor (readonly problem: WavProblem, message: string) {
    super(message)
    this.name = 'WavError'
  }
}

// Format tags (mmreg.h) named in refusals, so a client learns what it sent.
const FORMAT_NAMES: Record<number, string> = {
  0x0002: 'Microsoft ADPCM',
  0x0006: 'A-law',
  0x0007: 'µ-law',
  0x0011: 'IMA ADPCM',
  0x0031: 'GSM 6.10',
  0x0050: 'MPEG',
  0x0055: 'MPEG layer 3'
}
const WAVE_FORMAT_PCM = 0x0001
const WAVE_FORMAT_IEEE_FLOAT = 0x0003
const WAVE_FORMAT_EXTENSIBLE = 0xfffe

/** Reads and checks a WAV file's header. Throws WavError. */
export function readWavInfo (buf: Buffer): WavInfo {
  if (buf.length < 12 || buf.toString('latin1', 0, 4) !== 'RIFF' || buf.toString('latin1', 8, 12) !== 'WAVE') {
    // RF64 (>4 GiB WAV) is far beyond any size limit here.
    throw new WavError('not_wav', 'the body is not a WAV file (no RIFF/WAVE header)')
  }
  let offset = 12
  let fmt: { format: number, channels: number, sampleRate: number, blockAlign: number, bitsPerSample: number } | null = null
  let data: { start: number, size: number } | null = null
  // Canonical: `fmt ` (16 bytes, plain PCM tag) right after the RIFF header, `data` right after it.
  let canonicalFmt = false
  // Chunks are [id:4][size:4 LE][body, padded to an even length].
  while (offset + 8 <= buf.length && data === null) {
    const id = buf.toString('latin1', offset, offset + 4)
    const size = buf.readUInt32LE(offset + 4)
    const body = offset + 8
    if (id === 'fmt ') {
      if (size < 16 || body + size > buf.length) throw new WavError('invalid', 'the WAV fmt chunk is truncated')
      let format = buf.readUInt16LE(body)
      canonicalFmt = offset === 12 && size === 16 && format === WAVE_FORMAT_PCM
      if (format === WAVE_FORMAT_EXTENSIBLE) {
        if (size < 40) throw new WavError('invalid', 'the WAV fmt chunk is too short for WAVE_FORMAT_EXTENSIBLE')
        // The sub-format GUID's first two bytes are the format tag.
        format = buf.readUInt16LE(body + 24)
      }
      fmt = {
        format,
        channels: buf.readUInt16LE(body + 2),
        sampleRate: buf.readUInt32LE(body + 4),
        blockAlign: buf.readUInt16LE(body + 12),
        bitsPerSample: buf.readUInt16LE(body + 14)
      }
    } else if (id === 'data') {
      if (fmt === null) throw new WavError('invalid', 'the WAV data chunk comes before its fmt chunk')
      // A streaming writer may leave the size at 0 or 0xFFFFFFFF: take what the file holds.
      data = { start: body, size: Math.min(size === 0 ? Infinity : size, buf.length - body) }
    }
    offset = body + size + (size % 2)
  }
  if (fmt === null) throw new WavError('invalid', 'the WAV file has no fmt chunk')
  if (fmt.format !== WAVE_FORMAT_PCM && fmt.format !== WAVE_FORMAT_IEEE_FLOAT) {
    const name = FORMAT_NAMES[fmt.format] ?? `format tag 0x${fmt.format.toString(16).padStart(4, '0')}`
    throw new WavError('unsupported_encoding', `WAV encoding ${name} is not supported: send PCM (8, 16, 24 or 32-bit) or 32-bit float`)
  }
  const bitsOk = fmt.format === WAVE_FORMAT_PCM ? [8, 16, 24, 32].includes(fmt.bitsPerSample) : [32, 64].includes(fmt.bitsPerSample)
  if (!bitsOk) throw new WavError('unsupported_encoding', `${fmt.bitsPerSample}-bit ${fmt.format === 1 ? 'PCM' : 'float'} WAV is not supported`)
  if (fmt.channels < 1 || fmt.channels > 8) throw new WavError('unsupported_encoding', `WAV with ${fmt.channels} channels is not supported (1 to 8)`)
  if (fmt.sampleRate < 8000 || fmt.sampleRate > 192_000) throw new WavError('unsupported_encoding', `WAV sample rate ${fmt.sampleRate} Hz is not supported (8000 to 192000)`)
  if (fmt.blockAlign !== fmt.channels * fmt.bitsPerSample / 8) throw new WavError('invalid', 'the WAV block alignment does not match channels × bits per sample')
  if (data === null) throw new WavError('invalid', 'the WAV file has no data chunk')
  const frames = Math.floor(data.size / fmt.blockAlign)
  if (frames === 0) throw new WavError('invalid', 'the WAV file holds no audio')
  return {
    format: fmt.format as 1 | 3,
    channels: fmt.channels,
    sampleRate: fmt.sampleRate,
    bitsPerSample: fmt.bitsPerSample,
    dataBytes: frames * fmt.blockAlign,
    dataOffset: data.start,
    durationMs: Math.round(frames / fmt.sampleRate * 1000),
    isEngineNative: canonicalFmt && data.start === 44 && fmt.format === WAVE_FORMAT_PCM && fmt.channels === 1 && fmt.sampleRate === 16000 && fmt.bitsPerSample === 16
  }
}

/** A canonical 44-byte header for 16-bit PCM (tests and tools build WAVs with it). */
export function pcm16WavHeader (dataBytes: number, sampleRate: number, channels: number): Buffer {
  const h = Buffer.alloc(44)
  h.write('RIFF', 0, 'latin1')
  h.writeUInt32LE(36 + dataBytes, 4)
  h.write('WAVEfmt ', 8, 'latin1')
  h.writeUInt32LE(16, 16)
  h.writeUInt16LE(1, 20)
  h.writeUInt16LE(channels, 22)
  h.writeUInt32LE(sampleRate, 24)
  h.writeUInt32LE(sampleRate * channels * 2, 28)
  h.writeUInt16LE(channels * 2, 32)
  h.writeUInt16LE(16, 34)
  h.write('data', 36, 'latin1')
  h.writeUInt32LE(dataBytes, 40)
  return h
}
