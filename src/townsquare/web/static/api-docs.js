// Starts Swagger UI on /docs (a file, not an inline script: the Content-Security-Policy
// allows no inline script).
"use strict";
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({ url: root.dataset.spec, dom_id: "#swagger-ui", deepLinking: true });
