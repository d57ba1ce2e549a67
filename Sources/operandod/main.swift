import ArgumentParser
import Foundation
import Logging
import OperandoDaemon
import OperandoStore
import ServiceLifecycle

@main
struct Operandod: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operandod",
        abstract: "Records operando experiments: instruments on one timeline, nothing lost.",
        discussion: "Runs in the foreground (systemd Type=notify). Control it with operandoctl.",
        version: Daemon.version)

    @Option(name: .long, help: "Configuration file (TOML).")
    var config: String?

    @Option(name: .long, help: "Validate this configuration file, print what it declares, and exit.")
    var checkConfig: String?

    @Option(name: .long, help: "Control socket path (overrides [daemon] socket).")
    var socket: String?

    @Option(name: .long, help: "Data directory (overrides [daemon] data_dir).")
    var dataDir: String?

    @Flag(name: .long, help: "Print the configuration key reference (Markdown) and exit.")
    var configReference = false

    @Flag(name: .long, help: "Print the experiment metadata schema (Markdown) and exit.")
    var metadataReference = false

    func run() async throws {
        if configReference {
            print(ConfigReference.markdown())
            return
        }
        if metadataReference {
            print(MetadataSchema.markdownTable, terminator: "")
            return
        }
        if let path = checkConfig {
            do {
                let c = try ConfigLoader.load(path: path)
                print("\(path): OK — \(c.devices.count) device(s): " + c.devices.map { "\($0.name) (\($0.driver) via \($0.transport))" }.joined(separator: ", "))
                return
            } catch {
                FileHandle.standardError.write(Data("\(error)\n".utf8))
                throw ExitCode(2)
            }
        }
        guard let path = config else {
            throw ValidationError("--config FILE is required (or --check-config FILE)")
        }
        let environment = ProcessInfo.processInfo.environment
        let loaded: DaemonConfig
        do {
            loaded = try ConfigLoader.load(path: path)
        } catch {
            FileHandle.standardError.write(Data("operandod: configuration rejected:\n\(error)\n".utf8))
            throw ExitCode(2)
        }
        let level = Logger.Level(rawValue: loaded.logLevel) ?? .info
        LoggingSystem.bootstrap { StderrLogHandler(label: $0, level: level, environment: environment) }
        let logger = Logger(label: "operandod")
        let daemon: Daemon
        do {
            daemon = try Daemon(config: loaded, socketPath: socket, dataDirectory: dataDir, environment: environment, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        let group = ServiceGroup(services: daemon.services(), gracefulShutdownSignals: [.sigterm, .sigint], cancellationSignals: [], logger: logger)
        do {
            try await group.run()
        } catch {
            logger.critical("stopped: \(error)")
            throw ExitCode(1)
        }
        logger.info("stopped cleanly")
    }
}
