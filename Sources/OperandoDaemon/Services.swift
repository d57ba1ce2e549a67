import Logging
import OperandoIO
import ServiceLifecycle

/// Runs blocking work (joining threads, draining to disk) on a dedicated thread, so the
/// cooperative pool never waits on I/O.
func offPool(_ name: String, _ body: @escaping @Sendable () -> Void) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        _ = IOThread(name: name, detached: true) {
            body()
            continuation.resume()
        }
    }
}

/// The writer thread, for the life of the daemon. Shut down last: it drains and closes the run.
struct RecorderService: Service {
    let daemon: Daemon
    func run() async throws {
        daemon.recorder.start()
        try? await gracefulShutdown()
        await offPool("recorder-stop") { daemon.shutdownRecorder(reason: "daemon stopping (SIGTERM/SIGINT)") }
    }
}

/// Every device's thread. Stopped before the writer, so the last records are in the rings when it drains.
struct DevicesService: Service {
    let daemon: Daemon
    func run() async throws {
        daemon.startDevices()
        try? await gracefulShutdown()
        await offPool("devices-stop") { daemon.stopDevices() }
    }
}

/// The control socket. READY=1 is sent once it listens.
struct ControlService: Service {
    let daemon: Daemon
    func run() async throws {
        let server = ControlServer(path: daemon.socketPath, handler: { [daemon] in daemon.handle($0, peer: $1) }, logger: daemon.logger)
        try server.start()
        daemon.logger.info("control socket listening at \(daemon.socketPath)")
        daemon.notifier.notify("READY=1\nSTATUS=idle, \(daemon.runners.count) device(s)")
        try? await gracefulShutdown()
        daemon.notifier.notify("STOPPING=1\nSTATUS=stopping: draining rings and closing the run")
        await offPool("control-stop") { server.stop() }
    }
}

/// WATCHDOG=1 at half of WATCHDOG_USEC, while the writer and devices are alive.
struct WatchdogService: Service {
    let daemon: Daemon
    func run() async throws {
        guard let interval = daemon.notifier.watchdogInterval else {
            try? await gracefulShutdown()
            return
        }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            daemon.notifier.notify("WATCHDOG=1")
            try? await Task.sleep(for: min(interval, .seconds(1)) )
            // Sleep the rest of the interval in short steps so shutdown is prompt.
            var slept: Duration = min(interval, .seconds(1))
            while slept < interval && !Task.isShuttingDownGracefully && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                slept += .milliseconds(100)
            }
        }
    }
}

extension Daemon {
    /// The daemon's services in start order; ServiceGroup stops them in reverse.
    public func services() -> [any Service] {
        [RecorderService(daemon: self), DevicesService(daemon: self), ControlService(daemon: self), WatchdogService(daemon: self)]
    }
}
