// The critical-alert tone: made with Web Audio (no file to fetch), muted by a toggle the
// nurse controls. The choice is kept in memory only (no browser storage).

let muted = false
let context: AudioContext | null = null

export function isMuted (): boolean {
  return muted
}

export function setMuted (value: boolean): void {
  muted = value
}

export function playCriticalTone (): void {
  if (muted) return
  try {
    context ??= new AudioContext()
    const at = context.currentTime
    for (const [offset, freq] of [[0, 880], [0.25, 660], [0.5, 880]] as const) {
      const osc = context.createOscillator()
      const gain = context.createGain()
      osc.frequency.value = freq
      gain.gain.setValueAtTime(0.0001, at + offset)
      gain.gain.exponentialRampToValueAtTime(0.3, at + offset + 0.02)
      gain.gain.exponentialRampToValueAtTime(0.0001, at + offset + 0.2)
      osc.connect(gain).connect(context.destination)
      osc.start(at + offset)
      osc.stop(at + offset + 0.22)
    }
  } catch {
    // No audio device, or autoplay refused before any input: the banner still shows.
  }
}
