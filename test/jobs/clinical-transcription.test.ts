// Issue 13 §5: a clinical language model built from the project's corpus, low-confidence words,
// and progress while a note is decoded (the word error rate: clinical-wer.test.ts).
import { readFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import { chunkBoundaries } from '../../jobs/transcription/chunks.ts'
import { LOW_CONFIDENCE, markLowConfidence } from '../../jobs/transcription/engine.ts'
import { buildClinicalModel, clinicalCorpusFile, corpusSentences } from '../../jobs/transcription/language-model.ts'
import { createPocketsphinxEngine, defaultModelDir } from '../../jobs/transcription/pocketsphinx.ts'
import { wordErrorRate } from '../../jobs/transcription/word-error-rate.ts'
import { heldOutClinicalSentences } from '../helpers/clinical-held-out.ts'
import { concatenate, sentences, speechDir, synthesize } from '../helpers/speech.ts'

const cmudictFile = path.join(defaultModelDir, 'cmudict-en-us.dict')
const dir = await speechDir()
t.teardown(async () => { await fs.rm(dir, { recursive: true, force: true }) })

/** log10 probabilities and backoffs of an ARPA text, and P(w | h) by the backoff rule. */
function arpaModel (arpa: string) {
  const grams = new Map<string, { p: number, bo: number }>()
  let order = 0
  for (const line of arpa.split('\n')) {
    const section = /^\\(\d)-grams:$/.exec(line)
    if (section !== null) { order = Number(section[1]); continue }
    if (order === 0 || line.trim() === '' || line.startsWith('\\')) continue
    const parts = line.split(' ')
    const words = parts.slice(1, 1 + order).join(' ')
    grams.set(words, { p: Number(parts[0]), bo: parts.length > 1 + order ? Number(parts[1 + order]) : 0 })
  }
  const prob = (history: string[], word: string): number => {
    const gram = grams.get([...history, word].join(' '))
    if (gram !== undefined) return 10 ** gram.p
    if (history.length === 0) return 0
    const bo = grams.get(history.join(' '))?.bo ?? 0
    return 10 ** bo * prob(history.slice(1), word)
  }
  return { grams, prob }
}

t.test('the clinical model is built deterministically, covers its corpus and is a distribution', async (t) => {
  const a = await buildClinicalModel({ cmudictFile })
  const b = await buildClinicalModel({ cmudictFile })
  t.equal(a.arpa, b.arpa, 'the same corpus gives the same language model, byte for byte')
  t.equal(a.dictionary, b.dictionary, 'and the same dictionary')
  t.same(a.missing, [], 'every word has a pronunciation (cmudict or the hand entries)')
  const { grams, prob } = arpaModel(a.arpa)
  const dictWords = new Set(a.dictionary.split('\n').map((l) => l.split(' ')[0]!.replace(/\(\d+\)$/, '')))
  const corpus = corpusSentences(await fs.readFile(clinicalCorpusFile, 'utf8'))
  t.ok(corpus.length >= 250, `${corpus.length} corpus sentences`)
  let missingGrams = 0
  for (const s of corpus) {
    const w = ['<s>', ...s, '</s>']
    for (let i = 1; i < w.length; i++) {
      if (!grams.has(w[i]!)) missingGrams++
      if (w[i] !== '</s>' && !dictWords.has(w[i]!)) missingGrams++
      if (!grams.has(`${w[i - 1]!} ${w[i]!}`)) missingGrams++
      if (i >= 2 && !grams.has(`${w[i - 2]!} ${w[i - 1]!} ${w[i]!}`)) missingGrams++
    }
  }
  t.equal(missingGrams, 0, 'every corpus word, bigram and trigram is in the model, every word in the dictionary')
  for (const word of ['litres', 'liters', 'haemoglobin', 'hemoglobin', 'oedema', 'edema', 'paracetamol', 'acetaminophen', 'milligrams', 'micrograms', 'saturations']) {
    t.ok(dictWords.has(word) && grams.has(word), `${word}: British and American spellings, drugs and units`)
  }
  const vocabulary = [...grams.keys()].filter((g) => !g.includes(' ') && g !== '<s>')
  for (const history of [[], ['<s>'], ['oxygen'], ['heart', 'rate'], ['milligrams'], ['two', 'litres']]) {
    const total = vocabulary.reduce((sum, w) => sum + prob(history, w), 0)
    t.ok(Math.abs(total - 1) < 1e-3, `P(· | ${history.join(' ') || 'nothing'}) sums to 1 (${total.toFixed(5)})`)
  }
})

t.test('the held-out sentences are not in the corpus', async (t) => {
  const corpus = new Set(corpusSentences(await fs.readFile(clinicalCorpusFile, 'utf8')).map((s) => s.join(' ')))
  for (const s of heldOutClinicalSentences) t.notOk(corpus.has(s), s)
})

t.test('words below the confidence bound are marked', async (t) => {
  const marked = markLowConfidence([
    { word: 'oxygen', startMs: 0, endMs: 400, confidence: 0.97 },
    { word: 'at', startMs: 400, endMs: 500, confidence: LOW_CONFIDENCE - 0.01 },
    { word: 'two', startMs: 500, endMs: 700 }
  ])
  t.same(marked.map((w) => w.lowConfidence), [false, true, false], 'no confidence: not marked')
})

t.test('chunks are cut in the pauses', async (t) => {
  const rate = 1000
  // 3 s of "speech", 0.5 s of silence, 3 s of speech, 0.5 s of silence, 3 s of speech.
  const samples = new Int16Array(10_000)
  for (let i = 0; i < samples.length; i++) {
    const inPause = (i >= 3000 && i < 3500) || (i >= 6500 && i < 7000)
    samples[i] = inPause ? 0 : (i % 7) * 1000 - 3000
  }
  const chunks = chunkBoundaries(samples, rate, { targetSeconds: 3, minSeconds: 2, maxSeconds: 4.5 })
  t.equal(chunks.length, 3)
  t.equal(chunks[0]![0], 0)
  t.equal(chunks.at(-1)![1], samples.length, 'the chunks cover the recording')
  for (let i = 1; i < chunks.length; i++) t.equal(chunks[i]![0], chunks[i - 1]![1], 'no gap, no overlap')
  t.ok(chunks[0]![1] > 3000 && chunks[0]![1] < 3500, `first cut in the first pause (${chunks[0]![1]})`)
  t.ok(chunks[1]![1] > 6500 && chunks[1]![1] < 7000, `second cut in the second pause (${chunks[1]![1]})`)
  t.same(chunkBoundaries(samples, rate, { targetSeconds: 20 }), [[0, samples.length]], 'a short note is one chunk')
})

t.test('progress moves while a multi-chunk note is decoded', async (t) => {
  const parts = []
  for (let i = 0; i < 3; i++) parts.push(await synthesize(sentences[i]!, dir, `part${i}`, { engineNative: true }))
  const note = await concatenate(parts, path.join(dir, 'note.wav'), 0.8)
  // The recognizer, through a wrapper that counts finished decodes: progress must be reported
  // while recognition is still to be done, not replayed after it all ended.
  const finished = path.join(dir, 'finished.log')
  await fs.writeFile(finished, '')
  const wrapper = path.join(dir, 'pocketsphinx-counting')
  // (It records the decode as done before passing the recognizer's output on.)
  await fs.writeFile(wrapper, `#!/bin/sh\nout=$(pocketsphinx_continuous "$@")\nrc=$?\necho done >> '${finished}'\nprintf '%s\\n' "$out"\nexit $rc\n`, { mode: 0o755 })
  const engine = createPocketsphinxEngine({ chunkSeconds: 3, binary: wrapper })
  const progress: number[] = []
  const decodesDoneAt: number[] = []
  const transcript = await engine.transcribe(note, {
    onProgress: (p) => {
      progress.push(p)
      decodesDoneAt.push(readFileSync(finished, 'utf8').split('\n').filter((l) => l === 'done').length)
    }
  })
  const decodes = readFileSync(finished, 'utf8').split('\n').filter((l) => l === 'done').length
  t.comment(`progress ${progress.map((p) => p.toFixed(2)).join(' ')} after ${decodesDoneAt.join(' ')} of ${decodes} decodes; "${transcript.text}"`)
  t.ok(decodes >= 3, `the note was decoded in chunks (${decodes})`)
  const early = progress.findIndex((p, k) => p > 0 && p < 1 && decodesDoneAt[k]! < decodes)
  t.ok(early >= 0, 'an intermediate value between 0 and 1 is reported while recognition is still under way')
  t.ok(progress.filter((p) => p > 0 && p < 1).length >= 2, 'one per chunk')
  t.ok(progress.every((p, k) => k === 0 || p >= progress[k - 1]!), 'never going back')
  t.equal(progress.at(-1), 1, 'ending at 1')
  let last = 0
  for (const w of transcript.words) {
    t.ok(w.startMs >= last, `word times run on across chunks (${w.word} ${w.startMs})`)
    last = w.startMs
  }
  const wer = wordErrorRate(sentences.slice(0, 3).join(' '), transcript.text)
  t.ok(wer.rate <= 0.25, `cutting at pauses keeps the words (WER ${wer.rate.toFixed(2)})`)
})
