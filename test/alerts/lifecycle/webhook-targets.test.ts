import net from 'node:net'
import t from 'tap'
import { parseRuleSet } from '../../../alerts/engine/rule-set.ts'
import { isPublicAddress, postWebhook } from '../../../alerts/webhook-address.ts'

// Issue 11 item 10: webhooks reach public https endpoints only, unless the rules file's
// webhookAllowList names the origin; secrets come from VIGIL_WEBHOOK_* variables only.
const problems = (yaml: string): string[] => {
  const r = parseRuleSet(yaml)
  return r.ok ? [] : r.problems.map((p) => p.message)
}
const hook = (url: string, secretEnv = 'VIGIL_WEBHOOK_PAGER') => `rules: []\nwebhooks: [{ id: w, url: "${url}", secretEnv: ${secretEnv} }]`

t.test('the rules file refuses webhook URLs that are not public https, and secrets outside VIGIL_WEBHOOK_', async (t) => {
  const refused: Array<[string, RegExp]> = [
    ['http://pager.example.org/x', /must be https/],
    ['https://127.0.0.1/x', /public host/],
    ['https://169.254.169.254/latest/meta-data', /public host/],
    ['https://10.1.2.3/x', /public host/],
    ['https://192.168.0.10/x', /public host/],
    ['https://172.16.5.5/x', /public host/],
    ['https://0x7f000001/x', /public host/],
    ['https://2130706433/x', /public host/],
    ['https://[::1]/x', /public host/],
    ['https://[::ffff:127.0.0.1]/x', /public host/],
    ['https://[fd00::1]/x', /public host/],
    ['https://localhost/x', /public host/],
    ['https://printer/x', /public host/],
    ['https://user:secret@pager.example.org/x', /user name or password/]
  ]
  for (const [url, expected] of refused) t.match(problems(hook(url)), [expected], url)
  t.match(problems(hook('https://pager.example.org/x', 'VIGIL_ADMIN_TOKEN')), [/secretEnv must begin with VIGIL_WEBHOOK_/])
  t.same(problems(hook('https://pager.example.org/x')), [], 'a public https URL is fine')
  t.same(problems(hook('https://93.184.215.14/x')), [], 'so is a public address')
})

t.test('webhookAllowList admits exactly the origins it names', async (t) => {
  const allowed = parseRuleSet('rules: []\nwebhookAllowList: ["http://127.0.0.1:8080"]\nwebhooks: [{ id: w, url: "http://127.0.0.1:8080/hook", secretEnv: VIGIL_WEBHOOK_LOCAL }]')
  t.match(allowed, { ok: true, ruleSet: { webhooks: [{ id: 'w', allowListed: true }] } })
  t.match(problems('rules: []\nwebhookAllowList: ["http://127.0.0.1:8080"]\nwebhooks: [{ id: w, url: "http://127.0.0.1:8081/hook", secretEnv: VIGIL_WEBHOOK_LOCAL }]'), [/must be https/])
  t.match(problems('rules: []\nwebhookAllowList: ["http://127.0.0.1:8080/hook"]\nwebhooks: []'), [/webhookAllowList\[0\] must be an origin/])
  t.match(problems('rules: []\nwebhookAllowList: ["http://user:pw@127.0.0.1:8080"]\nwebhooks: [{ id: w, url: "http://user:pw@127.0.0.1:8080/", secretEnv: VIGIL_WEBHOOK_LOCAL }]'), [/must be an origin/, /user name or password/])
})

t.test('public addresses: special-purpose ranges are not, mapped IPv6 judged by its IPv4', async (t) => {
  for (const a of ['127.0.0.1', '0.0.0.0', '10.0.0.1', '100.64.0.1', '169.254.169.254', '172.31.255.255', '192.168.1.1', '224.0.0.1', '255.255.255.255', '::1', '::', 'fe80::1', 'fc00::1', '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:a9fe:a9fe', '64:ff9b::7f00:1']) {
    t.notOk(isPublicAddress(a), `${a} is not public`)
  }
  for (const a of ['93.184.215.14', '1.1.1.1', '2606:4700:4700::1111', '::ffff:1.1.1.1']) t.ok(isPublicAddress(a), `${a} is public`)
})

t.test('at delivery, a name that resolves to loopback is refused before any connection (DNS rebinding)', async (t) => {
  let connections = 0
  const listener = net.createServer((socket) => { connections++; socket.destroy() })
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => listener.close(() => resolve())))
  const port = (listener.address() as net.AddressInfo).port
  // As if the name pointed at a public address when the file was read and at 127.0.0.1 now.
  await t.rejects(postWebhook({ url: `https://localhost:${port}/x` }, {}, '{}', 5000), { name: 'WebhookAddressError', message: /non-public address/ })
  await t.rejects(postWebhook({ url: `https://127.0.0.1:${port}/x` }, {}, '{}', 5000), { name: 'WebhookAddressError', message: /not a public address/ })
  await t.rejects(postWebhook({ url: `http://127.0.0.1:${port}/x` }, {}, '{}', 5000), { name: 'WebhookAddressError', message: /not https/ })
  t.equal(connections, 0, 'nothing reached the loopback listener')
})
