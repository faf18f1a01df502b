import { execFile } from 'node:child_process'

/**
 * Converts any WAV sox reads to what the engines expect: 16 kHz, mono (channels mixed),
 * 16-bit signed PCM. sox's rate effect is its high-quality resampler by default.
 */
export async function normalizeWav (input: string, output: string, signal?: AbortSignal): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    execFile('sox', ['-V1', input, '-r', '16000', '-c', '1', '-b', '16', '-e', 'signed-integer', output],
      { signal, killSignal: 'SIGKILL' }, (err) => {
        // sox's message names the files only (temp paths), never the content.
        if (err === null) resolve()
        else reject(new Error(`sox could not convert the audio (${(err as Error & { code?: unknown }).code ?? err.message})`))
      })
  })
}
