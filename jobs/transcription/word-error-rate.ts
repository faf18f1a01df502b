/** Lower-case words without punctuation: what a recognizer's output is compared on. */
export function normalizeWords (text: string): string[] {
  return text.toLowerCase().replace(/[^a-z0-9' ]+/g, ' ').split(/\s+/).filter((w) => w !== '')
}

/**
 * Word error rate: (substitutions + deletions + insertions) / reference words, from the
 * word-level Levenshtein distance (the standard ASR measure, e.g. NIST sclite).
 */
export function wordErrorRate (reference: string, hypothesis: string): { errors: number, words: number, rate: number } {
  const ref = normalizeWords(reference)
  const hyp = normalizeWords(hypothesis)
  let previous = Array.from({ length: hyp.length + 1 }, (_, j) => j)
  for (let i = 1; i <= ref.length; i++) {
    const row = [i]
    for (let j = 1; j <= hyp.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (ref[i - 1] === hyp[j - 1] ? 0 : 1))
    }
    previous = row
  }
  const errors = previous[hyp.length]!
  return { errors, words: ref.length, rate: ref.length === 0 ? (hyp.length === 0 ? 0 : 1) : errors / ref.length }
}
