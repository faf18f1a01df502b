// Issue 13 §5: the clinical model's word error rate on held-out clinical sentences (not in its
// corpus, not tuned on: test/helpers/clinical-held-out.ts), synthesized by festival.
import fs from 'node:fs/promises'
import t from 'tap'
import { createPocketsphinxEngine } from '../../jobs/transcription/pocketsphinx.ts'
import { wordErrorRate } from '../../jobs/transcription/word-error-rate.ts'
import { heldOutClinicalSentences } from '../helpers/clinical-held-out.ts'
import { speechDir, synthesize } from '../helpers/speech.ts'

const dir = await speechDir()
t.teardown(async () => { await fs.rm(dir, { recursive: true, force: true }) })

// Measured (docs/voice-notes.md): on this note the stock en-us model 0.208 (31 errors / 149
// words), the clinical model 0.148 (22 / 149). The bound fails the stock model.
const HELD_OUT_WER_BOUND = 0.18

t.test('clinical dictation: held-out word error rate within the bound the stock model fails', async (t) => {
  // One dictation of the 20 sentences (one festival run; decoded in chunks cut at the pauses).
  const wav = await synthesize(heldOutClinicalSentences.map((s) => `${s}.`).join('\n'), dir, 'heldout', { engineNative: true })
  // VIGIL_TEST_LANGUAGE_MODEL=generic runs the same test on the stock model (it fails).
  const languageModel = process.env.VIGIL_TEST_LANGUAGE_MODEL === 'generic' ? 'generic' : 'clinical'
  const transcript = await createPocketsphinxEngine({ languageModel }).transcribe(wav, {})
  const wer = wordErrorRate(heldOutClinicalSentences.join(' '), transcript.text)
  t.comment(`"${transcript.text}"`)
  t.ok(wer.rate <= HELD_OUT_WER_BOUND, `held-out clinical, ${languageModel} model: word error rate ${wer.rate.toFixed(3)} (${wer.errors}/${wer.words}) is at most ${HELD_OUT_WER_BOUND}`)
})
