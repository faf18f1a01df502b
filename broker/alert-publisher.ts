import type { Aedes } from 'aedes'

export type PublishMqtt = (topic: string, payload: string) => Promise<void>

/** Alert notifications on alerts/{patientId} and users/{userId}/alerts: QoS 1, never retained (a late subscriber must not see stale alerts). */
export function aedesPublisher (aedes: Aedes): PublishMqtt {
  return async (topic, payload) => {
    await new Promise<void>((resolve, reject) => {
      aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: false, dup: false }, (err) => {
        if (err === null || err === undefined) resolve()
        else reject(err)
      })
    })
  }
}
