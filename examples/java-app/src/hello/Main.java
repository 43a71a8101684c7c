package hello;

import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;

/** A tiny HTTP server that reports the JVM's heap limit, for Pier's java buildpack. */
public class Main {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 0);
        server.createContext("/", exchange -> {
            String body = "Hello from Pier on Java " + System.getProperty("java.version")
                    + " max_heap_mb=" + (Runtime.getRuntime().maxMemory() / (1024 * 1024))
                    + " memory_limit=" + System.getenv("MEMORY_LIMIT")
                    + " java_opts=" + System.getenv("JAVA_OPTS") + "\n";
            byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
            exchange.sendResponseHeaders(200, bytes.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(bytes);
            }
        });
        server.start();
        System.out.println("listening on " + port);
    }
}
