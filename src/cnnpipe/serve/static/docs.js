"use strict";
// Swagger UI on the service's OpenAPI document, from the files BentoML ships (no CDN). No online
// validator: Swagger UI would send the document to validator.swagger.io and show its badge.
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    validatorUrl: null,
  });
});
