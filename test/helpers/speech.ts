import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** Known sentences (clinical dictation and voice-message style) for recognition tests and the benchmark. */
export const sentences = [
  'the patient reported mild chest pain this morning',
  'please call me back tomorrow afternoon',
  'blood pressure was one hundred and forty over ninety',
  'she has been taking her medication twice a day',
  'i feel much better than yesterday',
  'his temperature went down after the second dose',
  'we will review the results at the next visit',
  'the swelling in the left leg has not changed'
]

/**
 * Speech from text with Debian's festival and the festvox-us-slt-hts voice (text2wave), as
 * festival writes it (the HTS voice: 32 kHz mono 16-bit) or, with `engineNative`, resampled
 * by sox to 16 kHz mono 16-bit. festival's output for a text is the same every time and costs
 * about a second of CPU a sentence, so it is kept in a cache in the temporary directory (keyed by
 * the text, the shape and text2wave's binary) and copied to `dir`: the recognizer's work is what
 * the tests measure, not the synthesis repeated by every file.
 */
export async function synthesize (text: string, dir: string, name: string, options: { engineNative?: boolean } = {}): Promise<string> {
  const native = options.engineNative === true
  const out = path.join(dir, native ? `${name}.wav` : `${name}.raw.wav`)
  const cached = path.join(await cacheDir(), `${createHash('sha256').update(JSON.stringify([text, native, await synthesizerId()])).digest('hex')}.wav`)
  try {
    await fs.copyFile(cached, out)
    return out
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const txt = path.join(dir, `${name}.txt`)
  const raw = path.join(dir, `${name}.raw.wav`)
  await fs.writeFile(txt, `${text}\n`)
  await run('text2wave', ['-eval', '(voice_cmu_us_slt_arctic_hts)', txt, '-o', raw])
  if (native) await run('sox', [raw, '-r', '16000', '-c', '1', '-b', '16', '-e', 'signed-integer', out])
  // Into the cache by rename, so a concurrent reader sees a whole file or none.
  const temp = `${cached}.${process.pid}.${Math.random().toString(36).slice(2)}`
  await fs.copyFile(out, temp)
  await fs.rename(temp, cached)
  return out
}

let cache: Promise<string> | null = null
async function cacheDir (): Promise<string> {
  cache ??= (async () => {
    const d = path.join(os.tmpdir(), 'vigil-speech-cache')
    await fs.mkdir(d, { recursive: true })
    return d
  })()
  return await cache
}

let synthesizer: Promise<string> | null = null
/** text2wave's path, size and mtime: a new festival gives new keys. */
async function synthesizerId (): Promise<string> {
  synthesizer ??= (async () => {
    const { stdout } = await run('sh', ['-c', 'command -v text2wave'])
    const file = stdout.trim()
    const st = await fs.stat(await fs.realpath(file))
    return `${file}:${st.size}:${st.mtimeMs}`
  })()
  return await synthesizer
}

/** Several files joined with `pauseSeconds` of silence between them (a longer note). */
export async function concatenate (files: string[], out: string, pauseSeconds = 0.5): Promise<string> {
  const padded: string[] = []
  for (const [i, f] of files.entries()) {
    const p = `${out}.${i}.wav`
    await run('sox', [f, p, 'pad', '0', String(pauseSeconds)])
    padded.push(p)
  }
  await run('sox', [...padded, out])
  await Promise.all(padded.map((p) => fs.rm(p)))
  return out
}

export async function speechDir (): Promise<string> {
  return await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-speech-'))
}
