// A stand-in for an unmodified audiobookshelf server, for the bridge tests, on the npm socket.io
// server as audiobookshelf itself uses it. It does what audiobookshelf's SocketAuthority does for
// the parts the bridge touches: `auth` with an access token (verified with jsonwebtoken and the
// fixture's secret, the user looked up in the fixture), `init`, per-user and admin rooms,
// `user_online` to admins, `pong`, and the cover search (`cover_search_result`, then
// `cover_search_complete`, except for a title "slow"; `cover_search_cancelled`). Plain HTTP requests get `upstream <path>`.
//
//   node upstream.mjs PORT SECRET USERS_JSON
//
// Commands, one JSON object per line on stdin; one line of JSON answers each:
//   {"cmd":"emit","to":"all"|"admins"|{"users":[id...]},"event":E,"data":D}  -> {"ok":true}
//   {"cmd":"state"} -> {"sockets":n,"users":{id:n},"admins":n,"cancelScans":[...],"searches":[...]}
//   {"cmd":"set_user","id":ID,"type":T} -> {"ok":true}   (as an edit in audiobookshelf would; its
//   sockets keep the rights they had at their auth, as audiobookshelf's do)
// It prints `ready PORT` once listening.
import http from "node:http";
import readline from "node:readline";
import { Server } from "socket.io";
import jwt from "jsonwebtoken";

const [port, secret, usersJson] = process.argv.slice(2);
const users = new Map(JSON.parse(usersJson).map((u) => [u.id, u]));
const cancelScans = [];
const searches = [];

const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(`upstream ${req.url}`);
});
const io = new Server(server, { path: "/socket.io", cors: { origin: "*" } });

io.on("connection", (socket) => {
  socket.on("auth", (token) => {
    let claims;
    try {
      claims = jwt.verify(token, secret);
    } catch {
      return socket.emit("auth_failed", { message: "Invalid token" });
    }
    const user = users.get(claims.userId);
    if (claims.type !== "access" || !user || !user.isActive) {
      return socket.emit("auth_failed", { message: "Invalid user" });
    }
    socket.data.user = user;
    socket.join(`user:${user.id}`);
    if (user.type === "root" || user.type === "admin") socket.join("admins");
    io.to("admins").emit("user_online", { id: user.id, username: user.username });
    socket.emit("init", { userId: user.id, username: user.username, usersOnline: [] });
  });
  socket.on("ping", () => socket.emit("pong"));
  socket.on("search_covers", (payload) => {
    if (!socket.data.user) return socket.emit("cover_search_error", { requestId: payload?.requestId, error: "Unauthorized" });
    searches.push({ user: socket.data.user.id, ...payload });
    socket.emit("cover_search_result", { requestId: payload.requestId, provider: "stand-in", covers: [`${payload.title}.jpg`] });
    // A search titled "slow" runs until it is cancelled.
    if (payload.title !== "slow") socket.emit("cover_search_complete", { requestId: payload.requestId });
  });
  socket.on("cancel_cover_search", (requestId) => socket.emit("cover_search_cancelled", { requestId }));
  socket.on("cancel_scan", (libraryId) => {
    const u = socket.data.user;
    if (u && (u.type === "root" || u.type === "admin")) cancelScans.push({ user: u.id, libraryId });
  });
  socket.on("disconnect", () => {
    if (socket.data.user) io.to("admins").emit("user_offline", { id: socket.data.user.id });
  });
});

function state() {
  const counts = {};
  let sockets = 0;
  for (const s of io.of("/").sockets.values()) {
    if (!s.data.user) continue;
    sockets += 1;
    counts[s.data.user.id] = (counts[s.data.user.id] || 0) + 1;
  }
  const admins = io.of("/").adapter.rooms.get("admins")?.size || 0;
  return { sockets, users: counts, admins, cancelScans, searches };
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const c = JSON.parse(line);
  if (c.cmd === "emit") {
    let target;
    if (c.to === "all") target = io.to([...new Set([...io.of("/").sockets.values()].filter((s) => s.data.user).map((s) => `user:${s.data.user.id}`))]);
    else if (c.to === "admins") target = io.to("admins");
    else target = io.to(c.to.users.map((id) => `user:${id}`));
    if (c.data === undefined) target.emit(c.event);
    else target.emit(c.event, c.data);
    console.log(JSON.stringify({ ok: true }));
  } else if (c.cmd === "set_user") {
    users.get(c.id).type = c.type;
    console.log(JSON.stringify({ ok: true }));
  } else if (c.cmd === "state") {
    console.log(JSON.stringify(state()));
  }
});
rl.on("close", () => process.exit(0));

server.listen(Number(port), "127.0.0.1", () => console.log(`ready ${server.address().port}`));
