// The publishing API seen from the apps' own client library.
import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import { authed, pollingClient, sleep, startServer, token, user, webClient } from './harness.mjs'

let srv
const open = []
before(async () => (srv = await startServer()))
after(async () => {
  for (const s of open) s.disconnect()
  await srv.stop()
})

async function publish(body, tok = token('apikey_admin_active'), base = '/audiobookshelf') {
  const res = await fetch(`${srv.url}${base}/api/socket/emit`, {
    method: 'POST',
    headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/json' },
    body: JSON.stringify(body)
  })
  return { status: res.status, body: await res.json() }
}

test('each target reaches socket.io-client sockets on both paths exactly once', async () => {
  const sock = async (make, tok) => {
    const s = make(srv.url)
    open.push(s)
    await authed(s, tok)
    return s
  }
  const tomWeb = await sock(webClient, token('legacy_tom'))
  const tomPoll = await sock((u) => pollingClient(u, '/socket.io'), token('apikey_tom_active'))
  const sara = await sock(webClient, token('legacy_sara'))
  const admin = await sock(webClient, token('legacy_admin'))
  const anon = webClient(srv.url)
  open.push(anon)
  await anon.connected$

  const podcast = { libraryId: '0c290f4d-b1f0-45ab-b66b-86724bbeec73', tags: ['family'], explicit: false }
  const cases = [
    [{ all: true }, [tomWeb, tomPoll, sara, admin]],
    [{ users: [user('tom').id] }, [tomWeb, tomPoll]],
    [{ admins: true }, [admin]],
    [{ libraryItem: podcast }, [tomWeb, tomPoll, sara, admin]],
    [{ libraryItem: { ...podcast, tags: [] } }, [sara, admin]],
    [{ library: '212d0f61-06e9-4ebb-a618-7f0f6007dbf9' }, [sara, admin]]
  ]
  for (const [i, [to, receivers]] of cases.entries()) {
    const event = `js_fan_${i}`
    const res = await publish({ event, data: { i }, to })
    assert.equal(res.status, 200, JSON.stringify(res.body))
    assert.equal(res.body.sockets, receivers.length, JSON.stringify(to))
    await sleep(300)
    for (const s of [tomWeb, tomPoll, sara, admin, anon]) {
      const expected = receivers.includes(s) ? [{ i }] : []
      assert.deepEqual(s.received(event), expected, `${JSON.stringify(to)}`)
    }
  }
})

test('the API answers 401, 403 and 400 as the contract says', async () => {
  assert.equal((await publish({ event: 'x', to: { all: true } }, 'nope')).status, 401)
  assert.equal((await publish({ event: 'x', to: { all: true } }, token('legacy_tom'), '')).status, 403)
  const bad = await publish({ event: 'connect', to: { all: true } })
  assert.equal(bad.status, 400)
  assert.match(bad.body.error, /reserved/)
})
