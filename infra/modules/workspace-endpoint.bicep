// The workspace's private endpoint in the aml subnet, with its private DNS zones linked to the VNet.
// Clusters without a public IP reach Azure ML through it: "You must use a workspace private
// endpoint for the compute resource to communicate with Azure Machine Learning services from the
// VNet" (https://learn.microsoft.com/azure/machine-learning/how-to-secure-training-vnet, "Compute
// instance/cluster or serverless with no public IP"); zones and group id from
// https://learn.microsoft.com/azure/machine-learning/how-to-configure-private-link and
// https://learn.microsoft.com/azure/private-link/private-endpoint-dns#ai--machine-learning.
// The workspace keeps its public endpoint for the studio and the operator's CLI; inside the VNet
// (the function app too) the workspace names resolve to the endpoint.

@description('Azure region.')
param location string

@description('Azure ML workspace name.')
param workspaceName string

@description('Virtual network id (the DNS zones are linked to it).')
param vnetId string

@description('Subnet of the endpoint (the clusters\' subnet).')
param subnetId string

@description('Tags for every resource.')
param tags object = {}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

var zoneNames = [
  'privatelink.api.azureml.ms'
  'privatelink.notebooks.azure.net'
]

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for zone in zoneNames: {
  name: zone
  location: 'global'
  tags: tags
}]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (zone, i) in zoneNames: {
  parent: zones[i]
  name: '${workspaceName}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}]

resource endpoint 'Microsoft.Network/privateEndpoints@2023-11-01' = {
  name: '${workspaceName}-pe'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: '${workspaceName}-pe'
        properties: {
          privateLinkServiceId: workspace.id
          groupIds: [
            'amlworkspace'
          ]
        }
      }
    ]
  }
}

resource zoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [for (zone, i) in zoneNames: {
      name: replace(zone, '.', '-')
      properties: {
        privateDnsZoneId: zones[i].id
      }
    }]
  }
}

output endpointId string = endpoint.id
