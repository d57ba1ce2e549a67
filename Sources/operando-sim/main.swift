import ArgumentParser
import Foundation
import OperandoCore
import OperandoDaemon
import OperandoIO
import OperandoVirtualCell

/// Runs one instrument simulator on its own, so operandod (or a vendor's client) can reach it
/// over a real transport: a TCP port or a pseudo-terminal that looks like a serial port.
@main
struct OperandoSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operando-sim",
        abstract: "Serve an instrument simulator over a real transport.",
        discussion: """
            Examples:
              operando-sim demo-potentiostat --listen 127.0.0.1:6501
                then in the daemon's config: transport = "tcp:127.0.0.1:6501".
              operando-sim zaber --pty /tmp/zaber0 --devices 2
                a chain of two Zaber stages on a new pseudo-terminal, symlinked at /tmp/zaber0.
              operando-sim amptek --packet-fd 3
                an Amptek DP5 on an inherited SOCK_SEQPACKET socket, one message per USB bulk
                transfer (how Tests/Support/umockdev-harness.py serves an emulated USB device).
            Serves one client at a time until SIGTERM/SIGINT. The first line on stdout says where.
            """)

    @Argument(help: "Simulator: \(SimulatorServing.names.joined(separator: ", ")).") var simulator: String
    @Option(name: .long, help: "HOST:PORT to listen on (IPv4). Port 0 picks a free port, printed on stdout.") var listen: String?
    @Option(name: .long, help: "Serve on a new pseudo-terminal and symlink it at this path (e.g. /tmp/zaber0).") var pty: String?
    @Option(name: .long, help: "Serve packets on this inherited AF_UNIX SOCK_SEQPACKET descriptor: one message per packet (USB bulk transfer).") var packetFd: Int32?
    @Option(name: .long, help: "Cell seconds per host second.") var timeScale: Double = 600
    @Option(name: .long, help: "Device name (used in the serial number).") var name = "sim"
    @Option(name: .long, help: "zaber: devices on the daisy chain (1-99).") var devices = 1
    @Option(name: .long, help: "Device clock drift relative to the host, ppm (simulators with a clock).") var clockDriftPpm: Double = 25
    @Option(name: .long, help: "Device clock at host time 0, s (simulators with a clock).") var clockOffsetS: Double = 1000

    func validate() throws {
        guard [listen != nil, pty != nil, packetFd != nil].filter({ $0 }).count == 1 else {
            throw ValidationError("give exactly one of --listen HOST:PORT, --pty LINK or --packet-fd N")
        }
        guard (1...99).contains(devices) else { throw ValidationError("--devices \(devices): a chain has 1 to 99 devices") }
    }

    func run() throws {
        let clock = MonotonicRawClock()
        let server: SimulatorServing.Server
        do {
            server = try SimulatorServing.makeServer(
                simulator, options: SimulatorServing.Options(
                    name: name, timeScale: timeScale, zaberDevices: devices,
                    deviceClock: SimulatedDeviceClock(driftPPM: clockDriftPpm, offsetNs: Int64(clockOffsetS * 1e9))), clock: clock)
        } catch {
            throw ValidationError("\(error)")
        }
        TerminationSignal.install()
        if let packetFd {
            let link = SeqPacketTransport(fd: FileDescriptor(rawValue: packetFd), clock: clock)
            defer { link.close() }
            say("operando-sim: \(simulator) serving packets on descriptor \(packetFd)")
            do {
                try server.serve(packets: link, shouldStop: { TerminationSignal.received })
            } catch let error as InstrumentError where error.code == .disconnected {
                FileHandle.standardError.write(Data("operando-sim: the peer closed the socket; done\n".utf8))
            }
        } else if let listen {
            guard let colon = listen.lastIndex(of: ":"), let port = UInt16(listen[listen.index(after: colon)...]) else {
                throw ValidationError("--listen \(listen): expected HOST:PORT, e.g. 127.0.0.1:6501")
            }
            let listener = try TCPListener(host: String(listen[..<colon]), port: port, clock: clock)
            say("operando-sim: \(simulator) listening on \(listen[..<colon]):\(listener.port)")
            while !TerminationSignal.received {
                guard let client = try listener.accept(timeout: .milliseconds(200)) else { continue }
                FileHandle.standardError.write(Data("operando-sim: client connected\n".utf8))
                try server.serve(client, shouldStop: { TerminationSignal.received })
                client.close()
                FileHandle.standardError.write(Data("operando-sim: client gone\n".utf8))
            }
        } else if let pty {
            let terminal = try PseudoTerminal(linkPath: pty, clock: clock)
            defer { terminal.close() }
            say("operando-sim: \(simulator) listening on \(pty) (\(terminal.slavePath))")
            while !TerminationSignal.received {
                do {
                    try server.serve(terminal, shouldStop: { TerminationSignal.received })
                } catch {
                    FileHandle.standardError.write(Data("operando-sim: \(error); serving on\n".utf8))
                }
                // serve returns early only when the terminal failed (e.g. a client stopped reading).
                if !TerminationSignal.received { ThreadSleep.sleep(.milliseconds(100)) }
            }
        }
    }

    /// One line on stdout, written at once (FileHandle does not buffer).
    private func say(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}
