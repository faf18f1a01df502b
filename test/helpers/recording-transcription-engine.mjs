import fs from 'node:fs'

/**
 * A TRANSCRIPTION_ENGINE module (the documented plug-in point) for tests about who runs jobs,
 * not about speech: each transcription appends `<pid> <wav file>` to the file named by
 * VIGIL_TEST_ENGINE_LOG (one short O_APPEND write: lines from several processes never mix),
 * takes 400 ms (long enough that one process alone would need 8 s for the test's 40 jobs, while
 * the other polls every second), and returns a fixed transcript. Plain JavaScript: the pool threads import
 * engine modules without tsx's loader (a `.ts` engine fails there with "Unknown file extension").
 */
export default function recordingEngine () {
  const logFile = process.env.VIGIL_TEST_ENGINE_LOG
  if (logFile === undefined) throw new Error('VIGIL_TEST_ENGINE_LOG is not set')
  return {
    name: 'recording',
    async transcribe (wavPath) {
      fs.appendFileSync(logFile, `${process.pid} ${wavPath}\n`)
      await new Promise((resolve) => setTimeout(resolve, 400))
      return { text: 'noted', words: [{ word: 'noted', startMs: 0, endMs: 500, confidence: 0.9 }], confidence: 0.9 }
    }
  }
}
