// A tiny HTTP server; `greeting` comes from the vendored node_modules/.
const http = require("http");
const greeting = require("greeting");

const port = parseInt(process.env.PORT || "8080", 10);
http
  .createServer((req, res) => {
    const body = `${greeting("Pier")} node=${process.version} env=${process.env.NODE_ENV} instance=${process.env.CF_INSTANCE_INDEX}\n`;
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end(body);
  })
  .listen(port, () => console.log(`listening on ${port}`));
