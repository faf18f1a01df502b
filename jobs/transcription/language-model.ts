import { createHash } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The clinical language model and dictionary pocketsphinx decodes with (issue 13 §5), built
 * from text the project ships: `clinical-corpus.txt` (sentences and phrases) and spoken
 * numbers. A backoff trigram model in ARPA format (Witten-Bell discounting, Witten & Bell
 * 1991; ARPA backoff format as in SRILM/CMUCLMTK) and a dictionary from the en-us cmudict
 * shipped with pocketsphinx-en-us, plus `clinical-pronunciations.dict` for words it lacks.
 * Pure functions of their input: the same corpus gives the same bytes.
 */

const here = path.dirname(fileURLToPath(import.meta.url))
export const clinicalCorpusFile = path.join(here, 'clinical-corpus.txt')
export const handPronunciationsFile = path.join(here, 'clinical-pronunciations.dict')
export const generalWordsFile = path.join(here, 'general-words.txt')

const ONES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven', 'twelve',
  'thirteen', 'fourteen', 'fifteen', 'sixteen', 'seventeen', 'eighteen', 'nineteen']
const TENS = ['', '', 'twenty', 'thirty', 'forty', 'fifty', 'sixty', 'seventy', 'eighty', 'ninety']

/** A number as said in dictation: 110 → "one hundred and ten" (British and common US usage). */
export function spokenNumber (n: number): string {
  if (n < 20) return ONES[n]!
  if (n < 100) return n % 10 === 0 ? TENS[Math.floor(n / 10)]! : `${TENS[Math.floor(n / 10)]!} ${ONES[n % 10]!}`
  const rest = n % 100
  const hundreds = `${ONES[Math.floor(n / 100)]!} hundred`
  return rest === 0 ? hundreds : `${hundreds} and ${spokenNumber(rest)}`
}

/** Vital signs and doses are numbers: every number to 250, and decimals as "x point y". */
export function numberSentences (): string[] {
  const out: string[] = []
  for (let n = 0; n <= 250; n++) out.push(spokenNumber(n))
  for (let n = 0; n <= 40; n++) for (let d = 0; d <= 9; d++) out.push(`${spokenNumber(n)} point ${ONES[d]!}`)
  return out
}

/** Lower-case words ([a-z'] only; hyphens and punctuation split words). */
export function tokenize (line: string): string[] {
  return line.toLowerCase().replace(/[^a-z' ]+/g, ' ').split(/\s+/).filter((w) => w !== '' && w !== "'")
}

/** The corpus file's sentences (comments and blank lines left out). */
export function corpusSentences (text: string): string[][] {
  return text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')).map(tokenize).filter((s) => s.length > 0)
}

const BOS = '<s>'
const EOS = '</s>'

function log10 (p: number): string {
  return Math.log10(p).toFixed(6)
}

/**
 * A backoff trigram model in ARPA format. Witten-Bell: a context h seen c(h) times with T(h)
 * distinct followers gives a seen word w P(w|h) = c(h,w) / (c(h) + T(h)) and leaves
 * T(h) / (c(h) + T(h)) to the shorter context, scaled by the backoff weight so the
 * distribution sums to one. Unigrams are add-one over the vocabulary: the corpus's words and
 * `extraWords` (everyday words the corpus's sentences may lack, reachable by backoff only).
 */
export function buildArpa (sentences: readonly string[][], extraWords: Iterable<string> = []): string {
  const counts = [new Map<string, number>(), new Map<string, number>(), new Map<string, number>()]
  const add = (map: Map<string, number>, key: string): void => { map.set(key, (map.get(key) ?? 0) + 1) }
  for (const s of sentences) {
    const w = [BOS, ...s, EOS]
    for (let i = 1; i < w.length; i++) add(counts[0]!, w[i]!)
    for (let i = 1; i < w.length; i++) add(counts[1]!, `${w[i - 1]!} ${w[i]!}`)
    for (let i = 2; i < w.length; i++) add(counts[2]!, `${w[i - 2]!} ${w[i - 1]!} ${w[i]!}`)
  }
  for (const word of extraWords) if (!counts[0]!.has(word)) counts[0]!.set(word, 0)
  const vocabulary = [...counts[0]!.keys()].sort()
  const total = [...counts[0]!.values()].reduce((a, b) => a + b, 0)
  const unigram = new Map<string, number>()
  for (const word of vocabulary) unigram.set(word, (counts[0]!.get(word)! + 1) / (total + vocabulary.length))

  // Per context (the n-gram without its last word): total count and distinct followers.
  const contexts = (map: Map<string, number>) => {
    const out = new Map<string, { count: number, types: number, followers: string[] }>()
    for (const [gram, c] of map) {
      const cut = gram.lastIndexOf(' ')
      const h = gram.slice(0, cut)
      const entry = out.get(h) ?? { count: 0, types: 0, followers: [] }
      entry.count += c
      entry.types++
      entry.followers.push(gram.slice(cut + 1))
      out.set(h, entry)
    }
    return out
  }
  const bigramContexts = contexts(counts[1]!)
  const trigramContexts = contexts(counts[2]!)

  const bigram = new Map<string, number>()
  for (const [gram, c] of counts[1]!) bigram.set(gram, c / (bigramContexts.get(gram.slice(0, gram.indexOf(' ')))!.count + bigramContexts.get(gram.slice(0, gram.indexOf(' ')))!.types))
  const trigram = new Map<string, number>()
  for (const [gram, c] of counts[2]!) {
    const h = trigramContexts.get(gram.slice(0, gram.lastIndexOf(' ')))!
    trigram.set(gram, c / (h.count + h.types))
  }

  const backoff = (h: { count: number, types: number, followers: string[] }, lower: (w: string) => number): number => {
    const left = h.types / (h.count + h.types)
    const lowerSeen = h.followers.reduce((sum, w) => sum + lower(w), 0)
    return left / Math.max(1e-9, 1 - lowerSeen)
  }
  const unigramBackoff = new Map<string, number>()
  for (const [h, entry] of bigramContexts) unigramBackoff.set(h, backoff(entry, (w) => unigram.get(w)!))
  const bigramBackoff = new Map<string, number>()
  for (const [h, entry] of trigramContexts) {
    const last = h.slice(h.indexOf(' ') + 1)
    bigramBackoff.set(h, backoff(entry, (w) => bigram.get(`${last} ${w}`)!))
  }

  const lines = ['\\data\\', `ngram 1=${vocabulary.length + 1}`, `ngram 2=${counts[1]!.size}`, `ngram 3=${counts[2]!.size}`, '', '\\1-grams:']
  // <s> is never predicted (ARPA convention: -99); it carries the sentence-start backoff.
  for (const word of [BOS, ...vocabulary]) {
    const p = word === BOS ? '-99.000000' : log10(unigram.get(word)!)
    const bo = unigramBackoff.get(word)
    lines.push(bo === undefined ? `${p} ${word}` : `${p} ${word} ${log10(bo)}`)
  }
  lines.push('', '\\2-grams:')
  for (const gram of [...bigram.keys()].sort()) {
    const bo = bigramBackoff.get(gram)
    lines.push(bo === undefined ? `${log10(bigram.get(gram)!)} ${gram}` : `${log10(bigram.get(gram)!)} ${gram} ${log10(bo)}`)
  }
  lines.push('', '\\3-grams:')
  for (const gram of [...trigram.keys()].sort()) lines.push(`${log10(trigram.get(gram)!)} ${gram}`)
  lines.push('', '\\end\\', '')
  return lines.join('\n')
}

/** `word` or `word(2)` → pronunciations, from a cmudict-format text. */
export function parseDictionary (text: string): Map<string, string[]> {
  const out = new Map<string, string[]>()
  for (const line of text.split('\n')) {
    const m = /^([^\s(]+)(?:\(\d+\))?\s+(.+?)\s*$/.exec(line)
    if (m === null || line.startsWith('#')) continue
    const list = out.get(m[1]!) ?? []
    list.push(m[2]!)
    out.set(m[1]!, list)
  }
  return out
}

/** The dictionary for `words`: cmudict first, hand entries for the rest; `missing` lists words neither has. */
export function buildDictionary (words: Iterable<string>, cmudict: Map<string, string[]>, hand: Map<string, string[]>): { text: string, missing: string[] } {
  const lines: string[] = []
  const missing: string[] = []
  for (const word of [...new Set(words)].sort()) {
    const prons = cmudict.get(word) ?? hand.get(word)
    if (prons === undefined) {
      missing.push(word)
      continue
    }
    prons.forEach((p, i) => lines.push(i === 0 ? `${word} ${p}` : `${word}(${i + 1}) ${p}`))
  }
  return { text: lines.join('\n') + '\n', missing }
}

export interface ClinicalModel { arpa: string, dictionary: string, sentences: string[][], missing: string[] }

/** Builds the model and dictionary from the shipped corpus (or `corpusText`). */
export async function buildClinicalModel (options: { cmudictFile: string, corpusText?: string }): Promise<ClinicalModel> {
  const corpus = options.corpusText ?? await fs.readFile(clinicalCorpusFile, 'utf8')
  const sentences = [...corpusSentences(corpus), ...numberSentences().map(tokenize)]
  const general = corpusSentences(await fs.readFile(generalWordsFile, 'utf8')).flat()
  const cmudict = parseDictionary(await fs.readFile(options.cmudictFile, 'utf8'))
  const hand = parseDictionary(await fs.readFile(handPronunciationsFile, 'utf8'))
  const { text, missing } = buildDictionary([...sentences.flat(), ...general], cmudict, hand)
  return { arpa: buildArpa(sentences, general), dictionary: text, sentences, missing }
}

/**
 * The built files on disk, under a directory named by their content hash in the temp
 * directory (written once, then renamed into place; reused by every thread and process).
 * No PHI: the corpus is project text.
 */
export async function clinicalModelFiles (cmudictFile: string): Promise<{ lm: string, dict: string }> {
  const model = await buildClinicalModel({ cmudictFile })
  if (model.missing.length > 0) throw new Error(`clinical dictionary: no pronunciation for ${model.missing.join(', ')} (add them to ${handPronunciationsFile})`)
  const hash = createHash('sha256').update(model.arpa).update(model.dictionary).digest('hex').slice(0, 16)
  const dir = path.join(os.tmpdir(), `vigil-clinical-lm-${hash}`)
  const lm = path.join(dir, 'clinical.lm')
  const dict = path.join(dir, 'clinical.dict')
  try {
    await fs.access(dict)
    return { lm, dict }
  } catch {}
  const staging = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-clinical-lm-build-'))
  await fs.writeFile(path.join(staging, 'clinical.lm'), model.arpa)
  await fs.writeFile(path.join(staging, 'clinical.dict'), model.dictionary)
  try {
    await fs.rename(staging, dir)
  } catch {
    // Another thread got there first: its files are the same bytes.
    await fs.rm(staging, { recursive: true, force: true })
  }
  return { lm, dict }
}
