import t from 'tap'
import { createJobQueue } from '../../jobs/job-queue.ts'
import { pcm16WavHeader, readWavInfo } from '../../jobs/transcription/wav.ts'
import { createKeyring } from '../../crypto/field-encryption.ts'
import { createVoiceNoteStore } from '../../jobs/voice-notes.ts'
import { randomKeys } from '../helpers/keys.ts'
import { openTestDatabase } from '../helpers/postgres.ts'

// Voice notes are PHI: audio (until transcribed), transcript and word timings are encrypted at
// rest, bound to their row, and survive a key rotation (re-encryption pass, old key retired).
const db = await openTestDatabase(t)

const keys = randomKeys('k1', 'k2')
const indexKey = Buffer.alloc(32, 7)
const onlyK1 = createKeyring('k1', new Map([['k1', keys.get('k1')!]]), indexKey)
const k2WithK1 = createKeyring('k2', keys, indexKey)
const onlyK2 = createKeyring('k2', new Map([['k2', keys.get('k2')!]]), indexKey)
const queue = createJobQueue({ pool: db.pool })

const samples = Buffer.alloc(16_000 * 2, 1)
const audio = Buffer.concat([pcm16WavHeader(samples.length, 16_000, 1), samples])
const spoken = 'the patient reports chest pain since yesterday'

t.test('audio and transcripts are ciphertext at rest and survive a key rotation', async (t) => {
  const { rows: [patient] } = await db.pool.query("INSERT INTO patients (id, display_name) VALUES (gen_random_uuid(), 'p') RETURNING id")
  const v1 = createVoiceNoteStore(db.pool, queue, onlyK1)
  const { voiceNote } = await v1.create({ patientId: patient.id, authorTokenId: 'test', authorUserId: null, audio, info: readWavInfo(audio) })

  const rawAudio = (await db.pool.query('SELECT audio FROM voice_note_audio WHERE voice_note_id = $1', [voiceNote.id])).rows[0].audio as Buffer
  t.notOk(rawAudio.includes(Buffer.from('RIFF')), 'no WAV header in the stored audio')
  t.same(await v1.audioOf(voiceNote.id), audio, 'the audio decrypts to what was uploaded')

  const client = await db.pool.connect()
  await v1.saveTranscript(client, voiceNote.id, { text: spoken, words: [{ word: 'chest', startMs: 0, endMs: 300 }], confidence: 0.9, engine: 'test' }).finally(() => client.release())
  const raw = (await db.pool.query('SELECT transcript, words_json, key_id FROM voice_notes WHERE id = $1', [voiceNote.id])).rows[0]
  t.notMatch(`${raw.transcript as string}${raw.words_json as string}`, /chest|pain/, 'no spoken word stored in clear')
  t.equal(raw.key_id, 'k1')
  t.equal((await v1.get(voiceNote.id))!.transcript, spoken)

  // Rotation: k2 active, k1 kept; reads still work, the pass moves everything to k2.
  const v2 = createVoiceNoteStore(db.pool, queue, k2WithK1)
  t.equal((await v2.get(voiceNote.id))!.transcript, spoken, 'readable with the old key still configured')
  t.same(await v2.keyUsage(), [{ keyId: 'k1', voiceNotes: 1 }])
  t.same(await v2.reencryptAll({}), { done: 1, failed: 0 })
  t.same(await v2.keyUsage(), [{ keyId: 'k2', voiceNotes: 1 }], 'k1 can be retired: 0 notes under it')

  // k1 removed: still readable.
  const v3 = createVoiceNoteStore(db.pool, queue, onlyK2)
  t.equal((await v3.get(voiceNote.id))!.transcript, spoken)
  t.same((await v3.get(voiceNote.id))!.words, [{ word: 'chest', startMs: 0, endMs: 300 }])
})
