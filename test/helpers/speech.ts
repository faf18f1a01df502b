import { execFile } from 'node:child_process'
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
 * by sox to 16 kHz mono 16-bit.
 */
export async function synthesize (text: string, dir: string, name: string, options: { engineNative?: boolean } = {}): Promise<string> {
  const txt = path.join(dir, `${name}.txt`)
  const raw = path.join(dir, `${name}.raw.wav`)
  await fs.writeFile(txt, `${text}\n`)
  await run('text2wave', ['-eval', '(voice_cmu_us_slt_arctic_hts)', txt, '-o', raw])
  if (options.engineNative !== true) return raw
  const out = path.join(dir, `${name}.wav`)
  await run('sox', [raw, '-r', '16000', '-c', '1', '-b', '16', '-e', 'signed-integer', out])
  return out
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
