import { spawn } from 'node:child_process'
import path from 'node:path'
import readline from 'node:readline'
import type { TranscribedWord, Transcript, TranscriptionEngine } from './engine.ts'
import { readWavInfo } from './wav.ts'
import fs from 'node:fs/promises'

/** Debian's pocketsphinx-en-us package: the acoustic model (en-us/), language model and dictionary. */
export const defaultModelDir = '/usr/share/pocketsphinx/model/en-us'

// Tokens pocketsphinx prints that are not words: sentence marks, silence, fillers, empty hypotheses.
const NOT_WORDS = /^(<s>|<\/s>|<sil>|\[[A-Z_]+\]|\+\+.*\+\+|\(NULL\))$/

/**
 * One line of `pocketsphinx_continuous -time yes` output: `word start end posterior`
 * (seconds). Hypothesis lines (the utterance's words alone) give null. Alternate
 * pronunciations print as `word(2)`.
 */
export function parseTimedWordLine (line: string): TranscribedWord | 'filler' | null {
  const m = /^(\S+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)$/.exec(line.trim())
  if (m === null) return null
  const token = m[1]!.replace(/\(\d+\)$/, '')
  if (NOT_WORDS.test(token)) return 'filler'
  return {
    word: token,
    startMs: Math.round(Number(m[2]) * 1000),
    endMs: Math.round(Number(m[3]) * 1000),
    // The posterior is a probability; rounding in pocketsphinx can print 1.0001.
    confidence: Math.min(1, Number(m[4]))
  }
}

/** Words → transcript; the overall confidence is the duration-weighted mean of the words'. */
export function transcriptOf (words: TranscribedWord[]): Transcript {
  let weight = 0
  let sum = 0
  for (const w of words) {
    const d = Math.max(1, w.endMs - w.startMs)
    weight += d
    sum += d * (w.confidence ?? 0)
  }
  return { text: words.map((w) => w.word).join(' '), words, ...(weight > 0 ? { confidence: sum / weight } : {}) }
}

/**
 * CMU PocketSphinx (Debian's 0.8+5prealpha) through `pocketsphinx_continuous`, one process
 * per file. It prints each utterance when it ends (its voice activity detector splits the
 * audio at pauses), with word timings: the last word's end over the file's duration is the
 * progress.
 */
export function createPocketsphinxEngine (options: { modelDir?: string, binary?: string } = {}): TranscriptionEngine {
  const modelDir = options.modelDir ?? defaultModelDir
  const binary = options.binary ?? 'pocketsphinx_continuous'
  return {
    name: 'pocketsphinx',
    async transcribe (wavPath, { onProgress, signal }) {
      signal?.throwIfAborted()
      const header = await fs.readFile(wavPath)
      const durationMs = readWavInfo(header).durationMs
      const child = spawn(binary, [
        '-infile', wavPath, '-time', 'yes', '-logfn', '/dev/null',
        '-hmm', path.join(modelDir, 'en-us'), '-lm', path.join(modelDir, 'en-us.lm.bin'), '-dict', path.join(modelDir, 'cmudict-en-us.dict')
      ], { stdio: ['ignore', 'pipe', 'ignore'] })
      const kill = (): void => { child.kill('SIGKILL') }
      signal?.addEventListener('abort', kill, { once: true })
      const words: TranscribedWord[] = []
      const exited = new Promise<number | null>((resolve, reject) => {
        child.once('error', reject)
        child.once('close', (code) => resolve(code))
      })
      try {
        for await (const line of readline.createInterface({ input: child.stdout })) {
          const parsed = parseTimedWordLine(line)
          if (parsed === null) continue
          if (parsed !== 'filler') words.push(parsed)
          const endMs = parsed === 'filler' ? Number(line.trim().split(' ')[2]) * 1000 : parsed.endMs
          if (durationMs > 0 && Number.isFinite(endMs)) onProgress?.(Math.min(0.99, endMs / durationMs))
        }
        const code = await exited
        signal?.throwIfAborted()
        if (code !== 0) throw new Error(`pocketsphinx_continuous exited with code ${String(code)}`)
      } finally {
        signal?.removeEventListener('abort', kill)
      }
      onProgress?.(1)
      return transcriptOf(words)
    }
  }
}
