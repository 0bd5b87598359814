// Kiln's Node.js runtime: runs `_HANDLER` against the Lambda Runtime API (2018-06-01).
//
// Started as `node node_bootstrap.mjs` inside an execution environment.  No npm dependencies.
// It follows the contract of AWS's Node.js runtime (aws-lambda-nodejs-runtime-interface-client):
//
// - `_HANDLER` is `path/to/file.export[.nested]`; the file is resolved against LAMBDA_TASK_ROOT
//   trying the bare name, `.js`, `.mjs`, `.cjs` (in AWS's order), then a package in node_modules;
//   it is loaded with a dynamic import, so ES modules and CommonJS both work.
// - Handlers are called as `handler(event, context, callback)`: a returned promise (async
//   handler) or the callback, whichever comes first, completes the invocation.  A successful
//   callback waits for the event loop to drain unless `context.callbackWaitsForEmptyEventLoop`
//   is false; a handler that does neither completes with `null` once the event loop is empty.
// - Init failures go to /runtime/init/error with `Lambda-Runtime-Function-Error-Type`
//   (Runtime.ImportModuleError, Runtime.HandlerNotFound, Runtime.MalformedHandlerName,
//   Runtime.UserCodeSyntaxError), then the process exits 1.
// - Invocation errors go to /runtime/invocation/{id}/error as {errorType, errorMessage, trace};
//   an uncaught exception also ends the process (exit 129), as on AWS.
// - console.* writes `<ISO ts>\t<requestId>\t<LEVEL>\t<message>` lines to stdout (newlines in a
//   message become \r, so one call is one log event), or JSON lines when
//   AWS_LAMBDA_LOG_FORMAT=JSON.

import fs from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import util from "node:util";

const API = process.env.AWS_LAMBDA_RUNTIME_API ?? "127.0.0.1:9001";
const PREFIX = "/2018-06-01/runtime";
const SELF = fileURLToPath(import.meta.url);
const TASK_ROOT = process.env.LAMBDA_TASK_ROOT ?? process.cwd();
const ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type";

// -- the Runtime API client ---------------------------------------------------------------------

const separator = API.lastIndexOf(":");
const apiHost = API.slice(0, separator).replace(/^\[|\]$/g, "");
const apiPort = Number(API.slice(separator + 1));
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(method, urlPath, body = "", headers = {}, retried = false) {
  return new Promise((resolve, reject) => {
    const payload = typeof body === "string" ? Buffer.from(body) : body;
    const req = http.request(
      {
        host: apiHost,
        port: apiPort,
        method,
        path: urlPath,
        agent,
        headers: { ...headers, "Content-Length": payload.length },
      },
      (res) => {
        const chunks = [];
        res.on("data", (chunk) => chunks.push(chunk));
        res.on("end", () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", (err) => {
      // A kept-alive socket the server closed meanwhile: try once more on a fresh one.
      if (!retried && req.reusedSocket && err.code === "ECONNRESET") {
        request(method, urlPath, body, headers, true).then(resolve, reject);
      } else {
        reject(err);
      }
    });
    req.end(payload);
  });
}

function post(urlPath, body, headers = {}) {
  return request("POST", urlPath, body, { "Content-Type": "application/json", ...headers });
}

// -- logging ------------------------------------------------------------------------------------

let currentRequestId; // undefined outside an invocation, printed as "undefined" like AWS
const JSON_FORMAT = (process.env.AWS_LAMBDA_LOG_FORMAT ?? "").toUpperCase() === "JSON";
const LEVELS = { TRACE: 0, DEBUG: 1, INFO: 2, WARN: 3, ERROR: 4, FATAL: 5 };
const minimumLevel = JSON_FORMAT
  ? (LEVELS[(process.env.AWS_LAMBDA_LOG_LEVEL ?? "").toUpperCase()] ?? 0)
  : 0;

function writeLog(level, args) {
  if (LEVELS[level] < minimumLevel) return;
  const timestamp = new Date().toISOString();
  let line;
  if (JSON_FORMAT) {
    const record = { timestamp, level, requestId: currentRequestId, message: util.format(...args) };
    const error = args.length === 1 && args[0] instanceof Error ? args[0] : undefined;
    if (error) {
      record.errorType = error.name;
      record.errorMessage = error.message;
      record.stackTrace = String(error.stack ?? "").split("\n");
    }
    line = JSON.stringify(record);
  } else {
    line = `${timestamp}\t${currentRequestId}\t${level}\t${util.format(...args)}`;
    line = line.replace(/\n/g, "\r");
  }
  process.stdout.write(line + "\n");
}

console.log = (...args) => writeLog("INFO", args);
console.info = (...args) => writeLog("INFO", args);
console.warn = (...args) => writeLog("WARN", args);
console.error = (...args) => writeLog("ERROR", args);
console.debug = (...args) => writeLog("DEBUG", args);
console.trace = (...args) => writeLog("TRACE", args);
console.fatal = (...args) => writeLog("FATAL", args);

// -- errors -------------------------------------------------------------------------------------

class RuntimeError extends Error {
  constructor(type, message, cause) {
    super(message);
    this.name = type;
    const frames = String((cause ?? this).stack ?? "").split("\n").filter((line) =>
      /^\s+at /.test(line));
    this.stack = [`${type}: ${message}`, ...frames].join("\n");
  }
}

function isError(value) {
  return (
    util.types.isNativeError(value) ||
    (value !== null && typeof value === "object" && typeof value.message === "string" &&
      typeof value.name === "string")
  );
}

/** The error body Lambda expects on /error and /init/error. */
function errorBody(error) {
  try {
    if (isError(error)) {
      const stack = String(error.stack ?? `${error.name}: ${error.message}`)
        .split("\n")
        .filter((line) => !line.includes(SELF));
      return { errorType: error.name, errorMessage: error.message, trace: stack };
    }
    return { errorType: typeof error, errorMessage: String(error), trace: [] };
  } catch {
    return {
      errorType: "handled",
      errorMessage: "callback called with Error argument, but there was a problem while " +
        "retrieving one or more of its message, name, and stack",
      trace: [],
    };
  }
}

function logError(prefix, body) {
  const logged = { errorType: body.errorType, errorMessage: body.errorMessage, stack: body.trace };
  writeLog("ERROR", [`${prefix} \t${JSON.stringify(logged)}`]);
}

async function postInitError(error) {
  const body = errorBody(error);
  logError("Uncaught Exception", body);
  try {
    await post(`${PREFIX}/init/error`, JSON.stringify(body), {
      [ERROR_TYPE_HEADER]: body.errorType,
    });
  } finally {
    process.exit(1);
  }
}

// -- loading the handler ------------------------------------------------------------------------

function fileExists(file) {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function resolveModule(moduleRoot, moduleName) {
  const base = path.resolve(TASK_ROOT, moduleRoot, moduleName);
  for (const extension of ["", ".js", ".mjs", ".cjs"]) {
    if (fileExists(base + extension)) return base + extension;
  }
  try {
    // Like AWS: a package (e.g. in node_modules) of that name also serves.
    const require = createRequire(path.join(TASK_ROOT, moduleRoot, "noop.js"));
    return require.resolve(moduleName, {
      paths: [TASK_ROOT, path.join(TASK_ROOT, moduleRoot)],
    });
  } catch {
    return undefined;
  }
}

async function loadHandler(handlerString) {
  if (/(^|\/)\.\.\//.test(handlerString)) {
    throw new RuntimeError("Runtime.MalformedHandlerName",
      "'../' not allowed in handler name. Bad handler");
  }
  const handlerName = path.basename(handlerString);
  const moduleRoot = handlerString.slice(0, handlerString.length - handlerName.length);
  const match = /^([^.]*)\.(.*)$/.exec(handlerName);
  if (!match || !match[1] || !match[2]) {
    throw new RuntimeError("Runtime.MalformedHandlerName", "Bad handler");
  }
  const [, moduleName, exportPath] = match;
  const file = resolveModule(moduleRoot, moduleName);
  if (file === undefined) {
    throw new RuntimeError("Runtime.ImportModuleError",
      `Error: Cannot find module '${path.join(moduleRoot, moduleName)}'`);
  }
  let namespace;
  try {
    if (path.extname(file) === "") {
      // An extension-less file: only CommonJS can load it (AWS requires it too).
      namespace = { default: createRequire(file)(file) };
    } else {
      namespace = await import(pathToFileURL(file).href);
    }
  } catch (err) {
    if (err instanceof SyntaxError) {
      throw new RuntimeError("Runtime.UserCodeSyntaxError", `${err.name}: ${err.message}`, err);
    }
    if (err?.code === "MODULE_NOT_FOUND" || err?.code === "ERR_MODULE_NOT_FOUND") {
      throw new RuntimeError("Runtime.ImportModuleError", `${err.name}: ${err.message}`, err);
    }
    throw err; // the module's own initialisation failed: reported under the error's own name
  }
  const handler = resolveExport(namespace, exportPath.split("."));
  if (handler === undefined) {
    throw new RuntimeError("Runtime.HandlerNotFound",
      `${handlerString} is undefined or not exported`);
  }
  if (typeof handler !== "function") {
    throw new RuntimeError("Runtime.HandlerNotFound", `${handlerString} is not a function`);
  }
  return handler;
}

function walk(object, keys) {
  let value = object;
  for (const key of keys) {
    if (value === null || value === undefined) return undefined;
    value = value[key];
  }
  return value;
}

function resolveExport(namespace, keys) {
  // ES modules export names directly; CommonJS exports sit on `default` (module.exports), and
  // only some of them are also lifted to named exports.
  const direct = walk(namespace, keys);
  return direct !== undefined ? direct : walk(namespace.default, keys);
}

// -- one invocation -----------------------------------------------------------------------------

let beforeExit = () => {};
process.on("beforeExit", () => beforeExit());

let inFlight; // { requestId, completed } while an invocation has not been reported

function parseJson(header) {
  if (!header) return undefined;
  try {
    return JSON.parse(header);
  } catch {
    return undefined;
  }
}

function serialise(result) {
  try {
    return JSON.stringify(result === undefined ? null : result);
  } catch (err) {
    throw new RuntimeError("Runtime.MarshalError",
      `Unable to stringify response body: ${err.message}`);
  }
}

function runInvocation(handler, next) {
  return new Promise((resolveInvocation) => {
    const headers = next.headers;
    const requestId = headers["lambda-runtime-aws-request-id"];
    const deadline = Number(headers["lambda-runtime-deadline-ms"] ?? 0);
    currentRequestId = requestId;
    process.env._X_AMZN_TRACE_ID = headers["lambda-runtime-trace-id"] ?? "";
    const state = { requestId, completed: false };
    inFlight = state;

    const finish = (promise) => {
      promise
        .catch((err) => process.stderr.write(`kiln: Runtime API request failed: ${err}\n`))
        .finally(() => {
          if (inFlight === state) inFlight = undefined;
          resolveInvocation();
        });
    };
    const fail = (error) => {
      if (state.completed) return;
      state.completed = true;
      beforeExit = () => {};
      const body = errorBody(error);
      logError("Invoke Error", body);
      finish(post(`${PREFIX}/invocation/${requestId}/error`, JSON.stringify(body)));
    };
    const succeed = (result) => {
      if (state.completed) return;
      let body;
      try {
        body = serialise(result);
      } catch (err) {
        fail(err);
        return;
      }
      state.completed = true;
      beforeExit = () => {};
      finish(post(`${PREFIX}/invocation/${requestId}/response`, body));
    };

    let waitForEmptyEventLoop = true;
    const callback = (err, result) => {
      if (state.completed) return;
      beforeExit = () => {};
      if (err !== undefined && err !== null) {
        fail(err);
      } else if (!waitForEmptyEventLoop) {
        succeed(result);
      } else {
        beforeExit = () => setImmediate(() => succeed(result));
      }
    };
    const done = (err, result) => (err !== undefined && err !== null ? fail(err) : succeed(result));
    const context = {
      get callbackWaitsForEmptyEventLoop() {
        return waitForEmptyEventLoop;
      },
      set callbackWaitsForEmptyEventLoop(value) {
        waitForEmptyEventLoop = Boolean(value);
      },
      succeed: (result) => done(null, result),
      fail: (err) => done(err ?? "handled"),
      done,
      functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
      functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
      invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"],
      memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
      awsRequestId: requestId,
      logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
      logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
      clientContext: parseJson(headers["lambda-runtime-client-context"]),
      identity: parseJson(headers["lambda-runtime-cognito-identity"]),
      getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    };

    // A handler that neither returns a promise nor calls back completes with null once the
    // event loop is empty.
    beforeExit = () => succeed(null);
    try {
      const text = next.body.toString("utf8");
      const event = text.trim() ? JSON.parse(text) : {};
      const result = handler(event, context, callback);
      if (result !== null && typeof result === "object" && typeof result.then === "function") {
        result.then(context.succeed, context.fail);
      }
    } catch (err) {
      fail(err);
    }
  });
}

// -- the main loop ------------------------------------------------------------------------------

function onUncaught(error) {
  const state = inFlight;
  if (state === undefined || state.completed) {
    logError("Uncaught Exception", errorBody(error));
    process.exit(129);
  }
  state.completed = true;
  beforeExit = () => {};
  const body = errorBody(error);
  logError("Uncaught Exception", body);
  post(`${PREFIX}/invocation/${state.requestId}/error`, JSON.stringify(body))
    .catch(() => {})
    .finally(() => process.exit(129));
}

async function main() {
  let handler;
  try {
    handler = await loadHandler(process.env._HANDLER ?? "");
  } catch (err) {
    await postInitError(err);
    return;
  }
  process.removeAllListeners("uncaughtException");
  process.removeAllListeners("unhandledRejection");
  process.on("uncaughtException", onUncaught);
  process.on("unhandledRejection", onUncaught);
  for (;;) {
    const next = await request("GET", `${PREFIX}/invocation/next`);
    if (next.status !== 200) {
      process.stderr.write(`kiln: /invocation/next answered ${next.status}: ${next.body}\n`);
      process.exit(1);
    }
    await runInvocation(handler, next);
    currentRequestId = undefined;
  }
}

process.on("uncaughtException", (err) => postInitError(err));
process.on("unhandledRejection", (err) => postInitError(err));
main().catch((err) => {
  process.stderr.write(`kiln: runtime failed: ${err?.stack ?? err}\n`);
  process.exit(1);
});
