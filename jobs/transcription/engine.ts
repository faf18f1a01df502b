import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { createPocketsphinxEngine } from './pocketsphinx.ts'

export interface TranscribedWord {
  word: string
  startMs: number
  endMs: number
  /** 0–1, when the engine gives one (pocketsphinx: the word's posterior probability). */
  confidence?: number
  /** confidence below LOW_CONFIDENCE: the reader should check this word against the audio. */
  lowConfidence?: boolean
}

export interface Transcript {
  text: string
  words: TranscribedWord[]
  /** 0–1 for the whole transcript, when the engine gives one. */
  confidence?: number
}

export interface TranscribeOptions {
  /** 0–1, as the engine gets through the audio. */
  onProgress?: (progress: number) => void
  /** Aborted: stop at once (kill the child process) and reject. */
  signal?: AbortSignal
}

/**
 * A speech recognizer. It gets a WAV file already converted to 16 kHz, mono, 16-bit PCM, and
 * must work offline: no network, no model download at run time.
 */
export interface TranscriptionEngine {
  readonly name: string
  transcribe (wavPath: string, options: TranscribeOptions): Promise<Transcript>
}

/**
 * Which engine a deployment uses (TRANSCRIPTION_ENGINE): the built-in `pocketsphinx`, or the
 * path of an ES module whose default export is `(options) => TranscriptionEngine | Promise<…>`
 * (e.g. Whisper through @huggingface/transformers reading a local model directory).
 * Plain data: it crosses into the worker threads.
 */
export type EngineSpec = {
  kind: 'pocketsphinx'
  modelDir?: string
  /** `clinical` (default): the model built from the project's clinical corpus; `generic`: pocketsphinx-en-us's own. */
  languageModel?: 'clinical' | 'generic'
  /** Decode in chunks of about this many seconds, cut at pauses (progress is reported per chunk). */
  chunkSeconds?: number
} | { kind: 'module', path: string }

export function parseEngineSpec (value: string): EngineSpec {
  if (value === 'pocketsphinx') return { kind: 'pocketsphinx', languageModel: 'clinical' }
  if (value === 'pocketsphinx-generic') return { kind: 'pocketsphinx', languageModel: 'generic' }
  return { kind: 'module', path: path.resolve(value) }
}

/**
 * Words whose confidence (pocketsphinx: posterior probability) is below this are marked
 * `lowConfidence` for the reader to check (issue 13 §5; chosen on the project's own test
 * sentences, see docs/voice-notes.md).
 */
export const LOW_CONFIDENCE = 0.5

/** Marks the words below LOW_CONFIDENCE (words without a confidence are not marked). */
export function markLowConfidence (words: TranscribedWord[]): TranscribedWord[] {
  return words.map((w) => ({ ...w, lowConfidence: w.confidence !== undefined && w.confidence < LOW_CONFIDENCE }))
}

/** Builds the engine named by `spec` (in the worker thread that will use it). */
export async function loadEngine (spec: EngineSpec): Promise<TranscriptionEngine> {
  if (spec.kind === 'pocketsphinx') return createPocketsphinxEngine({ modelDir: spec.modelDir, languageModel: spec.languageModel, chunkSeconds: spec.chunkSeconds })
  const mod = await import(pathToFileURL(spec.path).href) as { default?: (options: Record<string, unknown>) => TranscriptionEngine | Promise<TranscriptionEngine> }
  if (typeof mod.default !== 'function') throw new Error(`transcription engine module ${spec.path} has no default export function`)
  return await mod.default({})
}
