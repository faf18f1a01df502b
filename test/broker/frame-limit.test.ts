import net from 'node:net'
import t from 'tap'
import { FrameSizeChecker, FrameTooLargeError, MalformedLengthError } from '../../broker/frame-limit.ts'
import { startTestVigil } from '../helpers/vigil.ts'
import { remainingLength } from '../helpers/fuzz.ts'
import { nextEvent } from '../helpers/wait.ts'

/** A PUBLISH fixed header (0x30) with this remaining length. */
function header (remaining: number): Buffer {
  return Buffer.concat([Buffer.from([0x30]), remainingLength(remaining)])
}

t.test('checker follows frames split across chunks', async (t) => {
  const c = new FrameSizeChecker(1000)
  const frame = Buffer.concat([header(300), Buffer.alloc(300)])
  const twice = Buffer.concat([frame, frame])
  for (let i = 0; i < twice.length; i += 7) c.check(twice.subarray(i, i + 7))
  t.throws(() => c.check(header(2000)), FrameTooLargeError)
})

t.test('a length split over chunks is still caught', async (t) => {
  const c = new FrameSizeChecker(1000)
  const h = header(5000)
  c.check(h.subarray(0, 2))
  t.throws(() => c.check(h.subarray(2)), FrameTooLargeError)
})

t.test('five continuation bytes are malformed', async (t) => {
  t.throws(() => new FrameSizeChecker(1000).check(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01])), MalformedLengthError)
})

t.test('the broker drops a socket declaring a huge packet before reading it', async (t) => {
  const vigil = await startTestVigil({ MQTT_MAX_PACKET_BYTES: '4096' })
  t.teardown(() => vigil.close())
  const socket = net.connect(vigil.mqttPort, '127.0.0.1')
  await nextEvent(socket, 'connect', 'the TCP connection')
  const closed = nextEvent(socket, 'close', 'the broker to drop the socket')
  socket.on('error', () => {})
  // CONNECT declaring 200 MB; only the header is sent.
  socket.write(Buffer.concat([Buffer.from([0x10]), header(200_000_000).subarray(1)]))
  await closed
  const metrics = await fetch(`http://127.0.0.1:${vigil.httpPort}/metrics`).then((r) => r.text())
  t.match(metrics, /vigil_mqtt_refused_total\{reason="packet_too_large"\} 1/)
})
